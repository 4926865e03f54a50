"""Helpers shared by the three stages: the zoo of a config, the work dir."""
import os.path as osp

from mmengine.config import Config, ConfigDict

from dery.models.backbone import ZooCache
from dery.zoo import load_zoo, resolve_entry


def as_config(cfg):
    if isinstance(cfg, (str, bytes)) or hasattr(cfg, '__fspath__'):
        return Config.fromfile(cfg)
    if isinstance(cfg, Config):
        return cfg
    return Config(dict(cfg))


def work_dir_of(cfg, config_path=None):
    """``cfg.work_dir``, else ``work_dirs/<config stem>`` (mmpretrain's rule)."""
    if cfg.get('work_dir'):
        return cfg.work_dir
    path = config_path or cfg.filename or 'dery'
    return osp.join('work_dirs', osp.splitext(osp.basename(path))[0])


def _plain(obj):
    if isinstance(obj, (ConfigDict, dict)):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def zoo_entries(cfg):
    """``{name: ZooEntry}`` for the models a config's ``zoo`` names, in order."""
    zoo_cfg = cfg.get('zoo')
    if not zoo_cfg or not zoo_cfg.get('models'):
        raise ValueError('config has no `zoo.models`: list zoo names from model_zoo.yml or inline '
                         'entries, e.g. zoo = dict(models=["resnet50_in1k", "swin_tiny_in1k"])')
    file_entries = None
    out = {}
    for item in zoo_cfg['models']:
        if isinstance(item, str):
            if file_entries is None:
                file_entries = load_zoo(zoo_cfg.get('file'))
            entry = resolve_entry(item, file_entries)
        else:
            entry = resolve_entry(_plain(item))
        if entry.name in out:
            raise ValueError(f"zoo.models lists '{entry.name}' twice")
        out[entry.name] = entry
    return out


def build_zoo(cfg, entries=None):
    """A :class:`ZooCache` holding every zoo model of the config, built once."""
    entries = entries or zoo_entries(cfg)
    zoo_cfg = cfg.zoo
    size = tuple(zoo_cfg.get('input_size', (3, 224, 224)))
    cache = ZooCache([e.to_dict() for e in entries.values()], pretrained=zoo_cfg.get('pretrained', True),
                     input_size=size)
    return cache
