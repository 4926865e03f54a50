"""What the command-line tools share: arguments, config loading, the work-dir rule, errors.

Every tool under ``tools/`` is a thin script::

    from dery.cli import run, stage_parser

    def main():
        args = stage_parser(__doc__).parse_args()
        cfg = load_config(args)          # heavy imports happen from here on
        ...

    if __name__ == '__main__':
        run(main)

This module imports only the standard library at import time (mmengine's
``DictAction`` when ``--cfg-options`` is given), so ``--help`` answers at once. :func:`run`
prints DeRy's own errors (:class:`dery.errors.DeryError`) as one line
``error: ...`` and exits 2; ``--debug`` or ``DERY_DEBUG=1`` shows their
traceback. Anything else is a bug and keeps its traceback.
"""
import argparse
import os
import os.path as osp
import sys

__all__ = ['run', 'stage_parser', 'train_parser', 'test_parser', 'add_common_args', 'load_config', 'check_cfg_options',
           'setup_distributed', 'setup_threads', 'stage_logger', 'check_data_roots', 'add_check_hooks', 'print_table',
           'stage_time_table']

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


# ---------------------------------------------------------------------------- errors
def debug_enabled(argv=None):
    argv = sys.argv if argv is None else argv
    return '--debug' in argv or os.environ.get('DERY_DEBUG', '') not in ('', '0')


def run(main, *args, **kwargs):
    """Call ``main``; a DeRy error becomes ``error: <message>`` on stderr and exit code 2."""
    from dery.errors import DeryError, error_message
    try:
        code = main(*args, **kwargs)
    except DeryError as e:
        if debug_enabled():
            raise
        sys.stderr.write(f'error: {error_message(e)}\n')
        sys.stderr.flush()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write('interrupted\n')
        sys.stderr.flush()
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------------------- arguments
class DictAction(argparse.Action):
    """mmengine's ``DictAction`` (``--cfg-options k=v ...``), imported when the option is given: building
    the parser and ``--help`` import nothing of mmengine."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction as _DictAction
        action = _DictAction(self.option_strings, self.dest, nargs=self.nargs)
        for value in values:  # mmengine's parser fails with a traceback (RecursionError) on e.g. dict(...)
            try:
                action(parser, argparse.Namespace(), [value], option_string)
            except (RecursionError, AssertionError, ValueError, IndexError) as e:
                sys.stderr.write(f'error: --cfg-options {value!r}: cannot read this ({type(e).__name__}); write '
                                 'key=value with a number, a string, or a list [a,b] / tuple (a,b) of them, one '
                                 'key per item, e.g. constraints.params=[0,30000000]\n')
                raise SystemExit(2) from None
        action(parser, namespace, values, option_string)


def add_common_args(p, work_dir_help='the dir to save outputs (default: work_dirs/<config stem>)'):
    p.add_argument('--work-dir', help=work_dir_help)
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings in the config, key=value (e.g. partitioner.restarts=50)')
    p.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    p.add_argument('--debug', action='store_true', help='show the traceback of DeRy errors too')
    return p


def stage_parser(description):
    """Arguments of ``tools/partition.py`` and ``tools/assemble.py``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='DeRy config file')
    p.add_argument('--force', action='store_true', help='recompute even if the outputs are current')
    return add_common_args(p)


def train_parser(description):
    """mmpretrain's ``tools/train.py`` arguments."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='train config file path')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from the given checkpoint, or the latest in the work dir if none given')
    p.add_argument('--amp', action='store_true', help='enable automatic mixed precision training')
    p.add_argument('--no-validate', action='store_true', help='do not validate during training')
    p.add_argument('--auto-scale-lr', action='store_true', help='scale the lr with the total batch size')
    p.add_argument('--no-pin-memory', action='store_true', help='do not pin memory in data loaders')
    return add_common_args(p, 'the dir to save logs and models (default: work_dirs/<config stem>)')


def test_parser(description):
    """mmpretrain's ``tools/test.py`` arguments."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='test config file path (the training config, or a run\'s assembled.py)')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--out', help='dump the predictions to a pickle file for offline evaluation')
    return add_common_args(p, 'the directory to save the evaluation metrics')


# ---------------------------------------------------------------------------- config
#: the keys of DeRy's untyped config sections (anything else there is a typo)
SECTION_KEYS = dict(
    zoo=('models', 'file', 'pretrained', 'input_size'),
    probe=('dataset', 'batch_size', 'num_workers', 'num_samples', 'seed', 'data_preprocessor'),
    target=('dataset', 'data_preprocessor'),
    constraints=('params', 'flops'),
)
#: DeRy's typed sections: their registry (by name) and keys the stage takes besides the class's arguments
TYPED_SECTIONS = dict(similarity=('SIMILARITIES', ('store', 'checkpoint_interval', 'plot', 'progress', 'resume', 'device')),
                      partitioner=('PARTITIONERS', ()), proxy=('PROXIES', ()), solver=('SOLVERS', ()))


def _closest(key, candidates):
    import difflib
    return difflib.get_close_matches(key, sorted(map(str, candidates)), n=3)


def check_cfg_options(cfg, options):
    """Refuse ``--cfg-options`` keys that name nothing in the config (typos), in one line.

    A parent path must exist. A new leaf key is refused in DeRy's sections when
    the section cannot take it (the keys of ``zoo``/``probe``/``target``/
    ``constraints``/``assembly``, the arguments of the ``similarity``,
    ``partitioner``, ``proxy`` and ``solver`` types), and anywhere else when it
    is a near miss of an existing key.
    """
    from dery.errors import ConfigError
    for key in options or {}:
        node, parts = cfg._cfg_dict, key.split('.')
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                here = sorted(node.keys()) if isinstance(node, dict) else []
                close = _closest(part, here)
                hint = f"; did you mean {', '.join(close)}?" if close else f' (keys there: {", ".join(map(str, here))})'
                raise ConfigError(f"--cfg-options {key}: '{'.'.join(parts[:i + 1])}' is not in the config{hint}; "
                                  'check the key path')
        leaf = parts[-1]
        if not isinstance(node, dict) or leaf in node:
            continue
        section = parts[0] if len(parts) == 2 else None
        allowed = None
        if section in SECTION_KEYS:
            allowed = SECTION_KEYS[section]
        elif section == 'assembly':
            from dery.assembly.context import ASSEMBLY_KEYS
            allowed = ASSEMBLY_KEYS
        elif section in TYPED_SECTIONS and isinstance(node.get('type'), str):
            from dery import registry
            from dery.registry import accepted_arguments
            reg_name, extra = TYPED_SECTIONS[section]
            obj = getattr(registry, reg_name).get(node['type'])
            args = accepted_arguments(obj) if obj is not None else None
            allowed = None if args is None else tuple(args) + extra
        if allowed is not None:
            if leaf not in allowed:
                close = _closest(leaf, allowed)
                hint = f'did you mean {", ".join(close)}? ' if close else ''
                raise ConfigError(f"--cfg-options {key}: '{section}' has no key '{leaf}'; {hint}"
                                  f'its keys: {", ".join(sorted(allowed))}')
            continue
        close = _closest(leaf, node.keys())
        if close:
            raise ConfigError(f"--cfg-options {key}: '{leaf}' is not in '{'.'.join(parts[:-1])}'; did you mean "
                              f'{", ".join(close)}? (a new key must be added to the config file)')


def load_config(args, apply_work_dir=True):
    """The config of ``args.config`` with ``--cfg-options`` merged and the work dir set.

    The work dir: ``--work-dir``, else the config's ``work_dir``, else
    ``work_dirs/<config stem>`` (mmpretrain's rule, :func:`dery.utils.default_work_dir`).
    """
    from mmengine.config import Config

    from dery.errors import ConfigError
    from dery.utils.config import default_work_dir
    if not osp.isfile(args.config):
        raise ConfigError(f'config file not found: {args.config}')
    try:
        cfg = Config.fromfile(args.config)
    except Exception as e:  # noqa: BLE001 - a config with a syntax or base error is the user's to fix
        raise ConfigError(f'cannot load {args.config}: {type(e).__name__}: {str(e).splitlines()[0]}') from None
    if getattr(args, 'cfg_options', None):
        check_cfg_options(cfg, args.cfg_options)
        cfg.merge_from_dict(args.cfg_options)
    if apply_work_dir:
        if getattr(args, 'work_dir', None):
            cfg.work_dir = args.work_dir
        elif not cfg.get('work_dir'):
            cfg.work_dir = default_work_dir(args.config)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(getattr(args, 'local_rank', 0))
    setup_threads()
    return cfg


# ---------------------------------------------------------------------------- threads
def setup_threads():
    """torch's intra-op threads from the cores this process may use (:func:`dery.utils.dist.setup_threads`):
    ``DERY_NUM_THREADS``, else ``OMP_NUM_THREADS`` when you set it, else the available cores divided by the
    processes of the job on this machine (torchrun's ``LOCAL_WORLD_SIZE``), so that N CPU processes do
    not run N x all-cores threads."""
    from dery.utils.dist import setup_threads as _setup
    return _setup()


# ---------------------------------------------------------------------------- distributed
def setup_distributed(cfg, launcher):
    """Join the job before the Runner does (:func:`dery.utils.dist.init_dist`), and on CPU
    wrap models for DDP without device ids (mmengine's default wrapper assumes GPUs)."""
    if launcher in (None, 'none'):
        return
    import torch

    from dery.errors import DeryError
    from dery.utils.dist import init_dist
    dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
    try:
        init_dist(launcher, backend=dist_cfg.get('backend'), timeout=dist_cfg.get('timeout', 120))
    except Exception as e:  # noqa: BLE001 - rendezvous failures of all kinds
        addr, port = os.environ.get('MASTER_ADDR', '?'), os.environ.get('MASTER_PORT', '?')
        raise DeryError(f'could not join the distributed job at {addr}:{port} ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:160]}); check MASTER_ADDR/MASTER_PORT and that rank 0 '
                        'is reachable') from None
    if not torch.cuda.is_available() and not cfg.get('model_wrapper_cfg'):
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False, device_ids=None,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))


# ---------------------------------------------------------------------------- runs
def stage_logger(cfg, stage):
    """The 'dery' MMLogger, also writing ``WORK_DIR/<stage>_<timestamp>.log``.

    A second tool run in the same process (a notebook, a test) gets its own
    log file, and console handlers follow the current ``sys.stdout``/``stderr``:
    mmengine keeps the handlers of the first ``get_instance`` call.
    """
    import logging
    import time

    from mmengine.logging import MMLogger
    from mmengine.logging.logger import MMFormatter
    os.makedirs(cfg.work_dir, exist_ok=True)
    path = osp.join(cfg.work_dir, f'{stage}_{time.strftime("%Y%m%d_%H%M%S")}.log')
    if not MMLogger.check_instance_created('dery'):
        return MMLogger.get_instance('dery', logger_name='dery', log_file=path)
    logger = MMLogger.get_instance('dery')
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
            h.close()
        elif isinstance(h, logging.StreamHandler) and getattr(h.stream, 'closed', False):
            h.setStream(sys.stdout)
    handler = logging.FileHandler(path, 'w')
    handler.setFormatter(MMFormatter(color=False, datefmt='%Y/%m/%d %H:%M:%S'))
    handler.setLevel(logger.level)
    logger.addHandler(handler)
    return logger


def check_data_roots(cfg):
    """A data set whose ``data_root`` is missing: one line naming it, before anything runs."""
    from dery.errors import ConfigError
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader or not loader.get('dataset'):
            continue
        ds = loader['dataset']
        while isinstance(ds, dict) and 'dataset' in ds and 'data_root' not in ds:
            ds = ds['dataset']  # wrappers (RepeatDataset, ...)
        root = ds.get('data_root') if isinstance(ds, dict) else None
        if root and not osp.isdir(root):
            raise ConfigError(
                f"{key}.dataset ({ds.get('type')}) data_root '{root}' does not exist; put the data "
                f'set there (see configs/dery/README.md, "Data") or point {key}.dataset.data_root at it')


def add_check_hooks(cfg):
    """Add ``DataCheckHook`` (head classes vs data classes) and ``CheckpointCheckHook`` (a checkpoint
    to load must fit the network), both before the first iteration."""
    hooks = list(cfg.get('custom_hooks') or [])
    for name in ('DataCheckHook', 'CheckpointCheckHook'):
        if not any(h.get('type') == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks


def stage_time_table(work_dir, stages, wall=None):
    """A rich table of the seconds of every step of ``stages`` (from ``WORK_DIR/timings.json``, written by
    the stages that ran), the peak resident memory at the end of each stage and of this process, and the
    tool's ``wall`` time."""
    from rich.table import Table

    from dery.utils.io import load_timings
    from dery.utils.memory import peak_rss
    data = load_timings(work_dir)
    table = Table(title='time per stage (s)', title_justify='left')
    for col in ('stage', 'step', 'seconds'):
        table.add_column(col, justify='right' if col == 'seconds' else 'left')
    order = ('similarity_build', 'similarity_probe', 'similarity_capture', 'similarity_metric', 'similarity',
             'similarity_plot', 'partitioner', 'target_data', 'zoo_pass_build', 'zoo_pass_forward', 'tables',
             'ilp', 'candidate_build', 'proxy_score', 'proxy_evaluations', 'solver', 'final_build_and_write')
    for stage in stages:
        rows = {k[:-len('_seconds')]: v for k, v in (data.get(stage) or {}).items()
                if isinstance(v, (int, float)) and k.endswith('_seconds')}
        if 'solver' in rows and 'ilp' in rows:
            rows['proxy_evaluations'] = rows['solver'] - rows['ilp']
        keys = sorted(rows, key=lambda k: (k == 'total', order.index(k) if k in order else len(order), k))
        for key in keys:
            label = dict(similarity='similarity (all of it)', solver='solver (ILP + proxy evaluations)').get(
                key, key.replace('_', ' '))
            table.add_row(stage, label, f'{rows[key]:.2f}')
        if isinstance((data.get(stage) or {}).get('peak_rss_gib'), (int, float)):
            table.add_row(stage, 'peak RSS so far (GiB)', f"{data[stage]['peak_rss_gib']:.2f}")
    table.add_row('process', 'peak RSS (GiB)', f'{peak_rss() / (1 << 30):.2f}')
    if wall is not None:
        table.add_row('tool', 'wall', f'{wall:.2f}')
    return table


def print_table(table):
    """Print a rich table at least 140 columns wide (readable in logs and CI)."""
    from rich.console import Console
    Console(width=max(Console().width, 140)).print(table)
