"""DeRy's benchmark records (``model-index.yml``), as in mmpretrain: reading them.

``model-index.yml`` (repository root) imports ``configs/dery/metafile.yml``; each
model there is named after its config (mmpretrain's rule) and carries the config
path, its budget, measured params/FLOPs where a run measured them, and results
(the paper's figures are marked ``(paper)``). :mod:`dery.model_index.stats`
writes them; :func:`dery.apis.get_model` builds a model from them.
"""
import fnmatch
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from dery.errors import ConfigError, MissingFileError
from dery.utils.config import default_work_dir

__all__ = ['ModelInfo', 'default_model_index', 'load_model_index', 'list_models', 'get_model_info',
           'find_assembly']


@dataclass
class ModelInfo:
    """One model of the index (a ``Models`` entry of a metafile)."""
    name: str
    config: Optional[str]          # absolute path
    weights: Optional[str] = None
    collection: Optional[str] = None
    metadata: Dict = field(default_factory=dict)
    results: List = field(default_factory=list)
    metafile: Optional[str] = None


def default_model_index():
    """``$DERY_MODEL_INDEX``, else the ``model-index.yml`` of the source checkout."""
    env = os.environ.get('DERY_MODEL_INDEX')
    if env:
        return env
    return osp.abspath(osp.join(osp.dirname(__file__), '..', '..', 'model-index.yml'))


def _read_yaml(path, what):
    if not osp.isfile(path):
        raise MissingFileError(f'{what} not found: {path}')
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f)
    return data or {}


def load_model_index(path=None):
    """``{lower-case name: ModelInfo}`` from a ``model-index.yml`` (or one metafile)."""
    path = osp.abspath(path or default_model_index())
    root = osp.dirname(path)
    index = _read_yaml(path, 'model index')
    metafiles = [osp.join(root, p) for p in index.get('Import', [])] if 'Import' in index else [path]
    models = {}
    for meta_path in metafiles:
        meta = _read_yaml(meta_path, 'metafile')
        for entry in meta.get('Models') or []:
            name = entry['Name']
            key = name.lower()
            if key in models:
                raise ConfigError(f"model name '{name}' appears twice ({models[key].metafile} and {meta_path})")
            config = entry.get('Config')
            if config and not osp.isabs(config):
                # mmpretrain's rule: paths are relative to the model index's folder
                config = osp.join(root, config)
            models[key] = ModelInfo(name=name, config=config, weights=entry.get('Weights'),
                                    collection=entry.get('In Collection'),
                                    metadata=dict(entry.get('Metadata') or {}),
                                    results=list(entry.get('Results') or []), metafile=meta_path)
    return models


def list_models(pattern=None, model_index=None):
    """Names in the index, optionally filtered by a shell-style ``pattern``."""
    names = sorted(info.name for info in load_model_index(model_index).values())
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())]
    return names


def get_model_info(name, model_index=None):
    """The :class:`ModelInfo` of ``name`` (case-insensitive)."""
    models = load_model_index(model_index)
    info = models.get(name.lower())
    if info is None:
        import difflib
        close = difflib.get_close_matches(name.lower(), list(models), n=3)
        hint = f"; did you mean {', '.join(models[c].name for c in close)}?" if close else ''
        raise ConfigError(f"no model '{name}' in the model index{hint} (dery.apis.list_models() lists them)")
    return info


def find_assembly(assembly=None, name=None):
    """The ``assembly.json`` to build from: ``assembly`` (a file or a work dir), else
    ``work_dirs/<name>/assembly.json`` when it exists; None when there is none."""
    if assembly is not None:
        path = osp.join(assembly, 'assembly.json') if osp.isdir(assembly) else assembly
        if not osp.isfile(path):
            raise MissingFileError(f'assembly not found: {path} (give a work dir holding assembly.json, '
                                    'or the assembly.json itself)')
        return path
    if name:
        path = osp.join(default_work_dir(name), 'assembly.json')
        if osp.isfile(path):
            return path
    return None
