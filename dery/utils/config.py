"""Config helpers shared by the APIs and the tools: plain values, loading, the work-dir rule."""
import os.path as osp

from mmengine.config import Config, ConfigDict


def to_plain(obj):
    """``ConfigDict``/``Config`` trees as plain dicts and lists (tuples become lists)."""
    if isinstance(obj, Config):
        obj = obj._cfg_dict
    if isinstance(obj, (ConfigDict, dict)):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def as_config(cfg):
    """A :class:`~mmengine.config.Config` from a path, a Config or a dict."""
    if isinstance(cfg, (str, bytes)) or hasattr(cfg, '__fspath__'):
        return Config.fromfile(cfg)
    if isinstance(cfg, Config):
        return cfg
    return Config(dict(cfg))


def default_work_dir(config_path):
    """``work_dirs/<config stem>``: mmpretrain's rule for a config without ``work_dir``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(str(config_path or 'dery')))[0])


def work_dir_of(cfg, config_path=None):
    """``cfg.work_dir`` when set, else :func:`default_work_dir` of the config file."""
    if cfg.get('work_dir'):
        return cfg.work_dir
    return default_work_dir(config_path or cfg.filename)


__all__ = ['to_plain', 'as_config', 'default_work_dir', 'work_dir_of']
