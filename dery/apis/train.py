"""``prepare_stages(cfg)``: what ``tools/train.py`` does before the Runner starts."""
import os
import os.path as osp

from mmengine.dist import barrier, get_rank

from dery.assembly import resolve_model_cfg
from dery.assembly.context import is_fixed
from dery.assembly.stage import assembly_stamp, current_assembly, fixed_assembly_stamp
from dery.errors import ConfigError
from dery.partition.stage import partition_stamp
from dery.zoo import ZooCache
from .assemble import assemble
from .checks import check_config
from .partition import partition


def prepare_stages(cfg, launcher='none', resume=False):
    """Run the partition and assembly stages of a DeRy config when their outputs are missing or
    stale, then point the model at the work dir's assembly.

    A config whose backbone is not ``ReassembledBackbone(assembly='auto')`` is
    left as it is. The similarity stage runs on every rank (its batches are
    dealt to them), the assembly on rank 0 while the others wait.

    With ``resume`` the work dir's ``assembly.json`` and ``assembled_init.pth``
    are used as they are: when the config no longer matches them the run stops
    with one line (nothing in the work dir is touched). Saved checkpoints carry
    the assembly record (``AssemblyRecordHook``).
    """
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') != 'ReassembledBackbone' or bb.get('assembly') != 'auto':
        return None
    check_config(cfg, 'train')
    work_dir = cfg.work_dir
    path = osp.join(work_dir, 'assembly.json')
    if resume and osp.isfile(path):
        zoo = ZooCache.from_config(cfg.zoo)
        stamp = fixed_assembly_stamp(cfg, zoo) if is_fixed(cfg) else assembly_stamp(cfg, partition_stamp(cfg, zoo))
        existing, why = current_assembly(work_dir, stamp)
        if existing is None:
            raise ConfigError(
                f'--resume: {path} was made with other settings ({why}); resuming keeps the stage outputs of '
                'the work dir as they are. Either resume with the config (and --cfg-options) that made them, '
                'or train this config in a new --work-dir')
    else:
        os.makedirs(work_dir, exist_ok=True)
        if not is_fixed(cfg):  # a fixed assembly (assembly.blocks) needs no partition
            partition(cfg, work_dir, launcher=launcher, check=False)
        if get_rank() == 0:
            assemble(cfg, work_dir, launcher=launcher, check=False)
        barrier()
    record = resolve_model_cfg(cfg, work_dir)
    cfg.dery_assembly = osp.abspath(path)
    hooks = [h for h in (cfg.get('custom_hooks') or []) if h.get('type') != 'AssemblyRecordHook']
    cfg.custom_hooks = hooks + [dict(type='AssemblyRecordHook', assembly=cfg.dery_assembly)]
    return record
