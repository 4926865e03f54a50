"""Evaluate a trained DeRy (mmpretrain) model.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--cfg-options ...]
                                           [--launcher pytorch]

CONFIG is the training config (its work dir must hold assembly.json) or the
standalone WORK_DIR/assembled.py.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import dery  # noqa: F401
from dery.apis import resolve_model_cfg
from dery.apis.cli import add_check_hooks, check_cfg_options, check_data_roots, setup_distributed


def parse_args():
    p = argparse.ArgumentParser(description='Evaluate a DeRy (mmpretrain) model')
    p.add_argument('config', help='test config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='the directory to save the evaluation metrics')
    p.add_argument('--out', help='dump the predictions to a pickle file for offline evaluation')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings, key=value')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_data_roots(cfg)
    add_check_hooks(cfg)
    setup_distributed(cfg, args.launcher)
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
    main()
