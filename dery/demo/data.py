"""Stage 1 of the demo: the source data set (procedural glyphs) and the target data set (digits), their sizes."""

__all__ = ['describe_data', 'data_note']


def describe_data(ui, demo, pre_base, dery_cfg):
    """Build the train and test sets of both tasks once (drawn and cached on the first run) and describe them."""
    from dery.registry import DATASETS
    from dery.utils import to_plain
    st = ui.stage_task('data', '[1/6] data', 4)
    sizes = {}
    for key, cfgs in (('source', pre_base), ('target', dery_cfg)):
        for split_key in ('train_dataloader', 'val_dataloader'):
            ds = DATASETS.build(dict(to_plain(cfgs[split_key].dataset), pipeline=[]))
            sizes[(key, split_key)] = len(ds)
            ui.progress.advance(st)
    src_ds = to_plain(pre_base.train_dataloader.dataset)
    tgt_ds = to_plain(dery_cfg.train_dataloader.dataset)
    return dict(
        source=dict(type=src_ds['type'], num_classes=src_ds['num_classes'],
                    num_train=sizes[('source', 'train_dataloader')],
                    num_test=sizes[('source', 'val_dataloader')], image_size=src_ds['image_size'],
                    seed=src_ds['seed'], pretrain_iters=demo.pretrain_iters,
                    batch_size=pre_base.train_dataloader.batch_size),
        target=dict(type=tgt_ds['type'], style=tgt_ds.get('style', 'grey'),
                    num_train=sizes[('target', 'train_dataloader')],
                    num_test=sizes[('target', 'val_dataloader')], image_size=tgt_ds['image_size'],
                    finetune_iters=demo.finetune_iters, batch_size=dery_cfg.train_dataloader.batch_size,
                    optimizer=f'{dery_cfg.optim_wrapper.optimizer.type} lr '
                              f'{dery_cfg.optim_wrapper.optimizer.lr:g}, warm-up + cosine'))


def data_note(data_info):
    src, tgt = data_info['source'], data_info['target']
    return f'{src["num_train"]}+{src["num_test"]} glyphs, {tgt["num_train"]}+{tgt["num_test"]} digits'
