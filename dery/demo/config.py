"""The demo's settings and process: the demo config, the two stage configs it runs, the machine, the log."""
import logging
import os
import os.path as osp

__all__ = ['setup_process', 'load_demo', 'machine', 'demo_logger', 'stage_configs', 'task_configs', 'pretrain_recipe',
           'set_schedule']


def setup_process():
    """Offline and headless, warnings off, one torch thread; the registries and the target data loaded
    here, before the workers fork (they share them)."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    import warnings
    warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(1)

    import dery  # noqa: F401
    import dery.datasets  # noqa: F401  (registers the demo data sets before the workers fork)
    import dery.models  # noqa: F401
    from dery.errors import DeryError
    try:  # the target data (scikit-learn's digits) read once here, shared by the forked workers
        from dery.datasets.digits import load_digits_arrays
        load_digits_arrays()
    except ImportError as e:
        raise DeryError(str(e)) from None


def load_demo(config, quick=False, work_dir=None):
    """The demo settings (``--quick``: merged with their ``quick`` dict), ``work_dir`` resolved: the
    argument, else the config's, else ``work_dirs/<config stem>``."""
    from mmengine.config import Config

    from dery.errors import ConfigError
    from dery.utils import default_work_dir
    if not osp.isfile(config):
        raise ConfigError(f'demo config not found: {config}')
    demo = Config.fromfile(config)
    if quick:
        demo.merge_from_dict(dict(demo.quick))
    demo.work_dir = osp.abspath(work_dir or demo.get('work_dir') or default_work_dir(config))
    return demo


def machine(jobs=None):
    """CPU cores, training processes (``jobs``, default: the cores up to 4) and torch threads per process."""
    import torch
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    jobs = max(1, jobs or min(cpus, 4))
    return dict(cpus=cpus, jobs=jobs, threads_per_job=max(1, cpus // jobs), torch=torch.__version__)


def demo_logger(demo):
    """The 'dery' MMLogger into ``WORK_DIR/demo_<timestamp>.log``: INFO into the file only (the console
    shows the progress and the stage lines)."""
    from dery.cli import stage_logger
    logger = stage_logger(demo, 'demo')
    for h in logger.handlers:
        if type(h) is logging.StreamHandler:
            h.setLevel(logging.WARNING)
    return logger


def set_schedule(cfg, iters, eval_interval, warmup):
    """``max_iters`` with a linear warm-up then cosine to the end; test accuracy every ``eval_interval``."""
    from dery.errors import ConfigError
    warmup = max(1, min(int(warmup), iters - 1))
    cfg.train_cfg = dict(by_epoch=False, max_iters=int(iters), val_interval=int(eval_interval))
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=int(iters), T_max=int(iters) - warmup,
             eta_min=1e-5),
    ]
    if iters % eval_interval:
        raise ConfigError(f'eval_interval {eval_interval} must divide the iterations {iters}')


def _dery_config(demo, path, work_dir):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    if demo.get('dery_options'):
        cfg.merge_from_dict(dict(demo.dery_options))
    set_schedule(cfg, demo.finetune_iters, demo.eval_interval, demo.warmup_iters)
    cfg.work_dir = work_dir
    return cfg


def stage_configs(demo):
    """The source pre-training config and the DeRy config (paths relative to the demo config) with the
    demo's options and schedules; the glyphs cached in ``WORK_DIR/data``, DeRy's stages in ``WORK_DIR/dery``.
    The pre-training schedule is set per zoo model (:func:`pretrain_recipe`)."""
    from mmengine.config import Config
    cfg_dir = osp.dirname(osp.abspath(demo.filename))
    pre_base = Config.fromfile(osp.join(cfg_dir, demo.pretrain_config))
    if demo.get('pretrain_options'):
        pre_base.merge_from_dict(dict(demo.pretrain_options))
    data_dir = osp.join(demo.work_dir, 'data')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pre_base[key].dataset.cache_dir = data_dir
    dery_cfg = _dery_config(demo, osp.join(cfg_dir, demo.dery_config), osp.join(demo.work_dir, 'dery'))
    return pre_base, dery_cfg


def task_configs(demo):
    """``[(stem, DeRy config)]`` of the calibration's other target tasks (``calibration.tasks``), with the
    demo's options and fine-tuning schedule; stages in ``WORK_DIR/dery_<task>`` (``dery_shapes.py`` ->
    ``WORK_DIR/dery_shapes``)."""
    cfg_dir = osp.dirname(osp.abspath(demo.filename))
    out = []
    for rel in (demo.get('calibration') or {}).get('tasks') or []:
        stem = osp.splitext(osp.basename(rel))[0]
        out.append((stem, _dery_config(demo, osp.join(cfg_dir, rel), osp.join(demo.work_dir, stem))))
    return out


def pretrain_recipe(demo, name, family):
    """``dict(iters, lr, warmup)`` of zoo model ``name``: ``pretrain_recipes[name]``, else its family's."""
    from dery.errors import ConfigError
    recipes = demo.pretrain_recipes
    recipe = recipes.get(name) or recipes.get(family)
    if recipe is None:
        raise ConfigError(f'pretrain_recipes has no entry for {name} or its family {family!r}; '
                          f'add {family}=dict(iters=..., lr=..., warmup=...)')
    recipe = dict(recipe)
    base = dict(recipes.get(family) or {})
    recipe = dict(base, **recipe)
    missing = [k for k in ('iters', 'lr', 'warmup') if k not in recipe]
    if missing:
        raise ConfigError(f'pretrain_recipes for {name}: missing {", ".join(missing)}')
    return dict(iters=int(recipe['iters']), lr=float(recipe['lr']), warmup=int(recipe['warmup']))
