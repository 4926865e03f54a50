"""``model_zoo.yml``: reading and validating zoo entries.

Each entry names a pretrained model and where its weights come from::

    - name: resnet50_in1k            # unique zoo name, used by configs
      adapter: mmpretrain            # timm | mmpretrain | torchvision | local
      model: resnet50_8xb32_in1k     # the library's own model id
      weights: https://...pth        # hub id, URL or local path (null: library default)
      family: cnn                    # cnn | vit | swin
      pretrain: {data: ImageNet-1k, method: supervised}
      top1: 76.55                    # reported ImageNet top-1 (null if none)
      nodes: [layer1.0, ...]         # optional override of the derived node list
      kwargs: {}                     # optional model constructor arguments
      input_size: [3, 224, 224]      # optional probe size
      arch: {...}                    # local adapter only: architecture to load into
"""
import hashlib
import json
import os
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml

from dery.errors import DeryError
from dery.utils.config import to_plain
from .layout import FAMILIES

ADAPTERS = ('timm', 'mmpretrain', 'torchvision', 'local')
_FIELDS = ('name', 'adapter', 'model', 'weights', 'family', 'pretrain', 'top1', 'nodes', 'kwargs',
           'input_size', 'arch', 'allow_pickle', 'notes')


class ZooError(DeryError, ValueError):
    """A malformed ``model_zoo.yml`` or an unknown zoo name."""


@dataclass
class ZooEntry:
    name: str
    adapter: str
    model: Any = None
    weights: Optional[str] = None
    family: str = 'cnn'
    pretrain: Any = None
    top1: Optional[float] = None
    nodes: Optional[list] = None
    kwargs: dict = field(default_factory=dict)
    input_size: Optional[list] = None
    arch: Optional[dict] = None
    allow_pickle: bool = False
    notes: Optional[str] = None

    def to_dict(self):
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, False)}

    def identity(self, pretrained=True):
        """What determines the model this entry builds (for stage stamps): fields and weights.

        The weights are identified by the file's sha256 when they are a local
        file (or a URL already in torch.hub's cache), else by their source
        (URL, hub id, library default); random init by the entry name.
        """
        ident = {k: v for k, v in self.to_dict().items()
                 if k not in ('top1', 'notes', 'pretrain', 'name', 'weights', 'allow_pickle')}
        if not pretrained:
            ident['weights'] = 'random init (seeded by the entry name)'
            return ident
        from dery.utils.stamp import file_identity
        from .sources import hub_cache_file, is_url, looks_like_path
        w = self.weights
        if w and looks_like_path(w):
            ident['weights'] = file_identity(w)
        elif w and is_url(w) and osp.isfile(hub_cache_file(w)):
            ident['weights'] = dict(url=w, **file_identity(hub_cache_file(w)))
        else:
            ident['weights'] = w or f'{self.adapter} default weights of {self.model}'
        return ident

    def cache_key(self):
        """A digest of what determines the model's function (for caches)."""
        ident = {k: v for k, v in self.to_dict().items() if k not in ('top1', 'notes', 'pretrain')}
        blob = json.dumps(ident, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_zoo_path():
    """``$DERY_MODEL_ZOO`` or the repository's ``model_zoo.yml``."""
    env = os.environ.get('DERY_MODEL_ZOO')
    if env:
        return env
    return osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'model_zoo.yml')


def validate_entry(raw, where='inline zoo entry'):
    """Check one entry dict; return a :class:`ZooEntry`. Errors name entry and field."""
    if not isinstance(raw, dict):
        raise ZooError(f'{where}: each zoo entry must be a mapping, got {type(raw).__name__}')
    name = raw.get('name')
    label = f"{where} '{name}'" if name else where
    if not isinstance(name, str) or not name:
        raise ZooError(f'{where}: field `name` is missing or not a string')
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ZooError(f'{label}: unknown field(s) {unknown}; allowed fields: {", ".join(_FIELDS)}')
    adapter = raw.get('adapter')
    if adapter is None:
        raise ZooError(f'{label}: field `adapter` is missing (one of {", ".join(ADAPTERS)})')
    from dery.registry import ZOO_ADAPTERS
    if adapter not in ADAPTERS and ZOO_ADAPTERS.get(adapter) is None:
        raise ZooError(f'{label}: field `adapter` is {adapter!r}; use one of {", ".join(ADAPTERS)} '
                       'or a name registered in ZOO_ADAPTERS')
    if adapter == 'local':
        if not isinstance(raw.get('arch'), dict):
            raise ZooError(f'{label}: the local adapter needs field `arch` (e.g. {{library: timm, '
                           'model: resnet50}})')
        if not raw.get('weights'):
            raise ZooError(f'{label}: the local adapter needs field `weights` (a checkpoint path)')
    elif raw.get('model') in (None, ''):
        raise ZooError(f'{label}: field `model` is missing (the {adapter} model id)')
    family = raw.get('family')
    if family not in FAMILIES:
        raise ZooError(f'{label}: field `family` is {family!r}; use one of {", ".join(FAMILIES)}')
    if raw.get('weights') is not None and not isinstance(raw['weights'], str):
        raise ZooError(f'{label}: field `weights` must be a string (hub id, URL or path) or null')
    top1 = raw.get('top1')
    if top1 is not None and not isinstance(top1, (int, float)):
        raise ZooError(f'{label}: field `top1` must be a number or null, got {top1!r}')
    nodes = raw.get('nodes')
    if nodes is not None and (not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes)
                              or not nodes):
        raise ZooError(f'{label}: field `nodes` must be a non-empty list of module names')
    kwargs = raw.get('kwargs') or {}
    if not isinstance(kwargs, dict):
        raise ZooError(f'{label}: field `kwargs` must be a mapping')
    size = raw.get('input_size')
    if size is not None and (not isinstance(size, (list, tuple)) or len(size) != 3
                             or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ZooError(f'{label}: field `input_size` must be [C, H, W] positive integers')
    values = {k: raw[k] for k in _FIELDS if k in raw}
    values['kwargs'] = dict(kwargs)
    values['allow_pickle'] = bool(raw.get('allow_pickle', False))
    return ZooEntry(**values)


def load_zoo(path=None):
    """Read and validate ``model_zoo.yml``; return ``{name: ZooEntry}`` in file order."""
    path = path or default_zoo_path()
    if not osp.isfile(path):
        raise ZooError(f'model zoo file not found: {path}; pass a path or set $DERY_MODEL_ZOO')
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)  # safe_load: a zoo file can never run code
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(e, 'problem', None) or e
        if 'python/' in str(problem):
            raise ZooError(f'{path}{where}: python tags (!!python/...) are not allowed, the zoo file is read '
                           'with yaml.safe_load and never runs code; write plain values instead') from None
        raise ZooError(f'{path} is not valid YAML{where}: {problem}') from None
    if isinstance(raw, dict) and 'models' in raw:
        raw = raw['models']
    if not isinstance(raw, list):
        raise ZooError(f'{path}: expected a list of entries (or `models:` holding one)')
    entries = {}
    for i, item in enumerate(raw):
        entry = validate_entry(item, where=f'{osp.basename(path)} entry #{i + 1}')
        if entry.name in entries:
            raise ZooError(f"{osp.basename(path)}: duplicate name '{entry.name}' (entry #{i + 1}); "
                           'zoo names must be unique')
        entries[entry.name] = entry
    return entries


def resolve_entry(name_or_cfg, zoo=None):
    """A :class:`ZooEntry` from a zoo name, an entry dict or a ZooEntry."""
    if isinstance(name_or_cfg, ZooEntry):
        return name_or_cfg
    if isinstance(name_or_cfg, str):
        zoo = zoo if zoo is not None else load_zoo()
        if name_or_cfg not in zoo:
            import difflib
            close = difflib.get_close_matches(name_or_cfg, list(zoo), n=3)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise ZooError(f"'{name_or_cfg}' is not in the model zoo ({len(zoo)} models){hint} "
                           'Add it to model_zoo.yml or give an inline entry dict.')
        return zoo[name_or_cfg]
    if isinstance(name_or_cfg, dict):
        return validate_entry(dict(name_or_cfg))
    raise ZooError(f'a zoo model is a name or an entry dict, got {type(name_or_cfg).__name__}')


def entries_from_config(zoo_cfg):
    """``{name: ZooEntry}`` for the models a config's ``zoo`` section names, in order.

    ``zoo.models`` items are zoo names from ``zoo.file`` (default
    ``model_zoo.yml``), complete inline entries, or overrides of a named entry:
    a dict with the ``name`` of a ``model_zoo.yml`` entry and no ``adapter``
    (``dict(name='vit_tiny_in21k', kwargs=dict(img_size=64))``) merges its
    fields into that entry (``kwargs`` key by key).
    """
    if not zoo_cfg or not zoo_cfg.get('models'):
        raise ZooError('config has no `zoo.models`: list zoo names from model_zoo.yml or inline '
                       'entries, e.g. zoo = dict(models=["resnet50_in1k", "swin_tiny_in1k"])')
    file_entries = None
    out = {}
    for item in zoo_cfg['models']:
        item = dict(item) if hasattr(item, 'items') else item
        if isinstance(item, str) or (isinstance(item, dict) and 'adapter' not in item):
            if file_entries is None:
                file_entries = load_zoo(zoo_cfg.get('file'))
            name = item if isinstance(item, str) else item.get('name')
            entry = resolve_entry(name, file_entries) if isinstance(name, str) else resolve_entry(item)
            if isinstance(item, dict):
                merged = entry.to_dict()
                for key, value in item.items():
                    if key == 'kwargs' and isinstance(value, dict):
                        merged['kwargs'] = dict(merged.get('kwargs') or {}, **value)
                    else:
                        merged[key] = value
                entry = validate_entry(to_plain(merged), where=f"zoo.models override of '{name}'")
        else:
            entry = resolve_entry(to_plain(item))
        if entry.name in out:
            raise ZooError(f"zoo.models lists '{entry.name}' twice")
        out[entry.name] = entry
    return out
