"""``assemble(cfg)``: stage 3 from Python (what tools/assemble.py runs)."""
import os

from mmengine.registry import init_default_scope

from dery.assembly import run_assembly
from dery.assembly.context import is_fixed
from dery.assembly.stage import run_fixed_assembly
from dery.partition.stage import partition_stamp, run_partition
from dery.utils import as_config, work_dir_of
from dery.zoo import ZooCache
from .checks import check_config


def assemble(cfg, work_dir=None, launcher='none', force=False, zoo=None, check=True):
    """Choose and stitch blocks within the budget; the partition stage runs first when needed.

    Args:
        cfg (str | Config | dict): a DeRy config.
        work_dir (str | None): default ``cfg.work_dir``, else ``work_dirs/<config stem>``.
        launcher (str): the launcher of the similarity stage (see :func:`partition`).
        force (bool): recompute even when ``assembly.json`` is current.
        zoo (ZooCache | None): the zoo already built (default: from ``cfg.zoo``).
        check (bool): check the config first (:func:`dery.apis.checks.check_config`).

    Returns:
        Assembly: the record written to ``WORK_DIR/assembly.json`` (with
        ``assembled.py`` and ``assembled_init.pth`` beside it).

    A config that gives its assembly (``assembly = dict(blocks=[...], ...)``)
    is only built and recorded: no partition, no solver, no probe data.
    """
    cfg, zoo, work_dir = stage3_inputs(cfg, work_dir, zoo, check)
    if is_fixed(cfg):
        return run_fixed_assembly(cfg, zoo, work_dir, force=force)
    part = checked_partition(cfg, work_dir, zoo, launcher=launcher)
    return run_assembly(cfg, work_dir, zoo, part, partition_stamp(cfg, zoo), force=force)


def stage3_inputs(cfg, work_dir, zoo, check):
    """``(cfg, zoo, work_dir)``: the config (checked), the zoo and the work dir (made) of a stage-3 entry."""
    cfg = as_config(cfg)
    init_default_scope(cfg.get('default_scope', 'dery'))
    if check:
        check_config(cfg, 'assembly')
    work_dir = work_dir or work_dir_of(cfg)
    os.makedirs(work_dir, exist_ok=True)
    return cfg, (zoo if zoo is not None else ZooCache.from_config(cfg.zoo)), work_dir


def checked_partition(cfg, work_dir, zoo, launcher='none'):
    """The current partition (stage 2 runs when need be), checked against the zoo's node lists.

    The node lists come from stage 1 (no model is built here); when ``partition.json`` was reused they
    are not known yet and the assembly stage checks each model's nodes as it builds it."""
    part = run_partition(cfg, work_dir, zoo, launcher=launcher)
    known = {name: zoo.known_nodes(name) for name in zoo.names}
    part.validate(nodes={n: v if v is not None else (part.models[n].nodes if n in part.models else [])
                         for n, v in known.items()})
    return part
