"""What the command-line tools share: arguments, config loading, distributed set-up."""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction


def stage_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument('config', help='DeRy config file')
    p.add_argument('--work-dir', help='the dir to save outputs (default: work_dirs/<config stem>)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config, key=value (e.g. partitioner.restarts=50)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return p


def check_cfg_options(cfg, options):
    """Refuse ``--cfg-options`` keys that name nothing in the config (typos)."""
    for key in options or {}:
        node, parts = cfg._cfg_dict, key.split('.')
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SystemExit(f"error: --cfg-options {key}: '{'.'.join(parts[:i + 1])}' is not in the "
                                 f'config; check the key path (top-level keys: {", ".join(sorted(cfg.keys()))})')


def load_config(args):
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif not cfg.get('work_dir'):
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return cfg


def setup_dist(cfg, launcher):
    """Initialise torch.distributed for ``launcher`` (gloo on CPU)."""
    if launcher == 'none':
        return
    import torch
    from mmengine.dist import init_dist, is_distributed
    if is_distributed():
        return
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'nccl')
    if not torch.cuda.is_available():
        backend = 'gloo'
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 120)
    try:
        if launcher == 'pytorch' and not torch.cuda.is_available():
            # mmengine's init_dist calls torch.cuda.set_device, which fails on a machine without GPUs
            import datetime
            torch.distributed.init_process_group(backend='gloo',
                                                 timeout=datetime.timedelta(seconds=int(timeout)))
        else:
            # mmengine takes the timeout in seconds (it makes the timedelta itself)
            init_dist(launcher, backend=backend, timeout=int(timeout))
    except Exception as e:  # noqa: BLE001 - rendezvous failures of all kinds
        addr = os.environ.get('MASTER_ADDR', '?')
        port = os.environ.get('MASTER_PORT', '?')
        raise SystemExit(f'error: could not join the distributed job at {addr}:{port} ({type(e).__name__}: '
                         f'{str(e).splitlines()[0][:160]}); check MASTER_ADDR/MASTER_PORT and that rank 0 '
                         'is reachable') from None


def logger_for(cfg, stage):
    from mmengine.logging import MMLogger
    os.makedirs(cfg.work_dir, exist_ok=True)
    import time
    stamp = time.strftime('%Y%m%d_%H%M%S')
    return MMLogger.get_instance('dery', logger_name='dery',
                                 log_file=osp.join(cfg.work_dir, f'{stage}_{stamp}.log'))


def check_data_roots(cfg):
    """A data set whose ``data_root`` is missing: one line naming it, before anything runs."""
    import os.path as osp
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader or not loader.get('dataset'):
            continue
        ds = loader['dataset']
        while isinstance(ds, dict) and 'dataset' in ds and 'data_root' not in ds:
            ds = ds['dataset']  # wrappers (RepeatDataset, ...)
        root = ds.get('data_root') if isinstance(ds, dict) else None
        if root and not osp.isdir(root):
            raise SystemExit(
                f"error: {key}.dataset ({ds.get('type')}) data_root '{root}' does not exist; put the data "
                f'set there (see configs/dery/README.md, "Data") or point {key}.dataset.data_root at it')


def add_check_hooks(cfg):
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'DataCheckHook' for h in hooks):
        hooks.append(dict(type='DataCheckHook'))
    cfg.custom_hooks = hooks


def setup_distributed(cfg, launcher):
    """Join the job before the Runner does, and wrap models for DDP on CPU.

    mmengine's ``init_dist`` and its default DDP wrapper assume GPUs
    (``cuda.set_device``, ``device_ids=[LOCAL_RANK]``); on a machine without
    them the processes use gloo and DDP gets no device ids.
    """
    if launcher == 'none':
        return
    import torch
    setup_dist(cfg, launcher)
    if not torch.cuda.is_available() and not cfg.get('model_wrapper_cfg'):
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False, device_ids=None,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
