"""Evaluate a trained DeRy (mmpretrain) model.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--cfg-options ...]
                                           [--launcher pytorch]

CONFIG is the training config (its work dir must hold assembly.json) or the
standalone WORK_DIR/assembled.py.
"""
from dery.cli import run, test_parser


def main():
    args = test_parser(__doc__).parse_args()
    import os.path as osp

    from mmengine.runner import Runner

    from dery.assembly import assembly_of_checkpoint, resolve_model_cfg, use_assembly
    from dery.cli import add_check_hooks, check_data_roots, load_config, setup_distributed
    from dery.errors import ConfigError
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.launcher = args.launcher
    check_data_roots(cfg)
    add_check_hooks(cfg)
    setup_distributed(cfg, args.launcher)
    bb = cfg.model.get('backbone') or {}
    record = assembly_of_checkpoint(args.checkpoint) if bb.get('type') == 'ReassembledBackbone' else None
    if record is not None:
        use_assembly(cfg, record)  # the network the checkpoint was trained as, whatever --work-dir says
        cfg.dery_assembly = f'the assembly of {args.checkpoint}'
    else:
        resolve_model_cfg(cfg, cfg.work_dir)
    # the trained checkpoint holds every weight: skip loading assembled_init.pth
    cfg.model.backbone.pop('init_cfg', None)
    cfg.load_from = args.checkpoint
    if args.out:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) else list(
            cfg.test_evaluator)
        cfg.test_evaluator.append(dict(type='DumpResults', out_file_path=args.out))
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    runner.logger.info(f'test metrics: {metrics}')


if __name__ == '__main__':
    run(main)
