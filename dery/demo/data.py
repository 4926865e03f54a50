"""Stage 1 of the demo: the source data set (procedural glyphs), the target data set (digits) and the
calibration's second target task (procedural shapes), their sizes."""

__all__ = ['describe_data', 'data_note']


def describe_data(ui, demo, pre_base, dery_cfg, tasks=()):
    """Build the train and test sets of every task once (drawn and cached on the first run) and describe them."""
    from dery.registry import DATASETS
    from dery.utils import to_plain
    from .config import pretrain_recipe
    cfgs = [('source', pre_base), ('target', dery_cfg)] + [(stem, cfg) for stem, cfg in tasks]
    st = ui.stage_task('data', '[1/6] data', 2 * len(cfgs))
    sizes = {}
    for key, cfg in cfgs:
        for split_key in ('train_dataloader', 'val_dataloader'):
            ds = DATASETS.build(dict(to_plain(cfg[split_key].dataset), pipeline=[]))
            sizes[(key, split_key)] = len(ds)
            ui.progress.advance(st)
    src_ds = to_plain(pre_base.train_dataloader.dataset)
    tgt_ds = to_plain(dery_cfg.train_dataloader.dataset)
    families = sorted({e['family'] for e in to_plain(dery_cfg.zoo.models)})
    recipes = {f: pretrain_recipe(demo, None, f) for f in families}
    opt = dery_cfg.optim_wrapper.optimizer
    others = []
    for stem, cfg in tasks:
        ds = to_plain(cfg.train_dataloader.dataset)
        others.append(dict(name=stem, type=ds['type'], num_classes=int(cfg.model.head.num_classes),
                           num_train=sizes[(stem, 'train_dataloader')], num_test=sizes[(stem, 'val_dataloader')],
                           image_size=ds.get('image_size')))
    return dict(
        source=dict(type=src_ds['type'], num_classes=src_ds['num_classes'],
                    num_train=sizes[('source', 'train_dataloader')],
                    num_test=sizes[('source', 'val_dataloader')], image_size=src_ds['image_size'],
                    seed=src_ds['seed'], recipes=recipes, batch_size=pre_base.train_dataloader.batch_size),
        target=dict(type=tgt_ds['type'], style=tgt_ds.get('style', 'grey'),
                    num_train=sizes[('target', 'train_dataloader')],
                    num_test=sizes[('target', 'val_dataloader')], image_size=tgt_ds['image_size'],
                    finetune_iters=demo.finetune_iters, batch_size=dery_cfg.train_dataloader.batch_size,
                    optimizer=f'{opt.type} lr {opt.lr:g}, warm-up + cosine'),
        tasks=others)


def data_note(data_info):
    src, tgt = data_info['source'], data_info['target']
    extra = ''.join(f', {t["num_train"]}+{t["num_test"]} {t["type"]}' for t in data_info.get('tasks', []))
    return f'{src["num_train"]}+{src["num_test"]} glyphs, {tgt["num_train"]}+{tgt["num_test"]} digits{extra}'
