"""``partition(cfg)``: stages 1 + 2 from Python (what tools/partition.py runs)."""
import os

from dery.partition.stage import run_partition
from dery.utils import as_config, work_dir_of
from dery.zoo import ZooCache
from .checks import check_config


def partition(cfg, work_dir=None, launcher='none', force=False, zoo=None, check=True):
    """Functional similarity (cached) and the cover-set partition of a config's zoo.

    Args:
        cfg (str | Config | dict): a DeRy config.
        work_dir (str | None): default ``cfg.work_dir``, else ``work_dirs/<config stem>``.
        launcher (str): ``'none'``, ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.
        force (bool): recompute even when ``partition.json`` is current.
        zoo (ZooCache | None): the zoo already built (default: from ``cfg.zoo``).
        check (bool): check the config first (:func:`dery.apis.checks.check_config`).

    Returns:
        Partition: the record written to ``WORK_DIR/partition.json``.
    """
    cfg = as_config(cfg)
    if check:
        check_config(cfg, 'partition')
    work_dir = work_dir or work_dir_of(cfg)
    os.makedirs(work_dir, exist_ok=True)
    zoo = zoo if zoo is not None else ZooCache.from_config(cfg.zoo)
    return run_partition(cfg, work_dir, zoo, launcher=launcher, force=force)
