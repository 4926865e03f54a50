"""Train a DeRy config with mmengine's Runner (mmpretrain's interface).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--no-validate]
                                 [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

On a DeRy config (``backbone=dict(type='ReassembledBackbone', assembly='auto')``)
the partition and assembly stages run first when their outputs are missing in
the work dir (the similarity stage on all ranks, the rest on rank 0 while the
others wait), so ``bash tools/dist_train.sh CONFIG 8`` alone does everything.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import dery  # noqa: F401  (safe checkpoint loading, registries)
from dery.apis.cli import add_check_hooks, check_cfg_options, check_data_roots, setup_dist, setup_distributed


def parse_args():
    p = argparse.ArgumentParser(description='Train a DeRy (mmpretrain) model')
    p.add_argument('config', help='train config file path')
    p.add_argument('--work-dir', help='the dir to save logs and models')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from the given checkpoint, or the latest in the work dir if none given')
    p.add_argument('--amp', action='store_true', help='enable automatic mixed precision training')
    p.add_argument('--no-validate', action='store_true', help='do not validate during training')
    p.add_argument('--auto-scale-lr', action='store_true', help='scale the lr with the total batch size')
    p.add_argument('--no-pin-memory', action='store_true', help='do not pin memory in data loaders')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config, key=value')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg, args):
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', dict(base_batch_size=256))
        cfg.auto_scale_lr.enable = True
    if args.no_pin_memory:
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if cfg.get(key):
                cfg[key]['pin_memory'] = False
    if args.cfg_options is not None:
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def prepare_dery_stages(cfg, launcher):
    """Partition and assemble when a DeRy config's outputs are missing; then point the model at them."""
    from mmengine.dist import barrier, get_rank

    from dery.apis import assemble, partition, resolve_model_cfg
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') != 'ReassembledBackbone' or bb.get('assembly') != 'auto':
        return
    os.makedirs(cfg.work_dir, exist_ok=True)
    setup_dist(cfg, launcher)
    # on every rank (the similarity is sharded over them); reused when partition.json is current
    partition(cfg, cfg.work_dir, launcher=launcher)
    if get_rank() == 0:
        assemble(cfg, cfg.work_dir, launcher=launcher)  # reused when current
    barrier()
    resolve_model_cfg(cfg, cfg.work_dir)


def main():
    args = parse_args()
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)
    check_data_roots(cfg)
    add_check_hooks(cfg)
    setup_distributed(cfg, args.launcher)
    prepare_dery_stages(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
