"""Train a DeRy config with mmengine's Runner (mmpretrain's interface).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--no-validate]
                                 [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

On a DeRy config (``backbone=dict(type='ReassembledBackbone', assembly='auto')``)
the partition and assembly stages run first when their outputs are missing in
the work dir (the similarity stage on all ranks, the rest on rank 0 while the
others wait), so ``bash tools/dist_train.sh CONFIG 8`` alone does everything.
"""
from dery.cli import run, train_parser


def merge_args(cfg, args):
    """mmpretrain's flags onto the config."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    cfg.launcher = args.launcher
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
    return cfg


def main():
    args = train_parser(__doc__).parse_args()
    from mmengine.runner import Runner

    from dery.apis import prepare_stages
    from dery.cli import add_check_hooks, check_data_roots, load_config, setup_distributed
    cfg = merge_args(load_config(args), args)
    check_data_roots(cfg)
    add_check_hooks(cfg)
    setup_distributed(cfg, args.launcher)
    prepare_stages(cfg, args.launcher, resume=args.resume is not None)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    run(main)
