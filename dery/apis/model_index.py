"""DeRy's benchmark records (``model-index.yml``) and ``get_model``, as in mmpretrain.

``model-index.yml`` (repository root) imports ``configs/dery/metafile.yml``; each
model there is named after its config (mmpretrain's rule) and carries the config
path, its budget, measured params/FLOPs where a run measured them, and results
(the paper's figures are marked ``(paper)``)::

    from dery.apis import get_model, list_models

    list_models('*_cub')                     # names, as in the metafile
    model = get_model('dery-k4-10m-3g_8xb32-ft-20k_cub',
                      assembly='work_dirs/dery-k4-10m-3g_8xb32-ft-20k_cub')
    model = get_model('configs/dery/tiny_cpu.py', assembly='work_dirs/tiny_cpu',
                      pretrained=True)       # the work dir's trained checkpoint

A DeRy model's architecture is the result of the search (``assembly.json``), so
building one needs the assembly: ``assembly=`` (a work dir or an
``assembly.json``), else ``work_dirs/<name>/assembly.json`` when it exists.
``pretrained=False`` (default) builds with random weights and reads no weights;
``True`` loads the record's ``Weights`` when it has any, else the work dir's
latest training checkpoint, else the assembled initial weights
(``assembled_init.pth``: zoo blocks and fitted stitches, untrained head); a
string is a checkpoint path or URL.
"""
import copy
import os
import os.path as osp

from mmengine.config import Config

from dery.errors import ConfigError, MissingFileError
from dery.model_index import find_assembly, get_model_info, list_models

__all__ = ['get_model', 'list_models', 'get_model_info']


def _latest_checkpoint(work_dir):
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker, encoding='utf-8') as f:
            path = f.read().strip()
        if path and not osp.isabs(path):
            path = osp.join(work_dir, path)
        if path and osp.isfile(path):
            return path
    return None


def get_model(model, pretrained=False, assembly=None, device=None, model_index=None, **kwargs):
    """Build a DeRy model from its metafile name, a config path or a Config.

    Args:
        model (str | Config): a name from the model index (see :func:`list_models`),
            a config file, or a Config.
        pretrained (bool | str): False: random weights, nothing read. True: the
            record's ``Weights``, else the latest checkpoint of the assembly's work
            dir, else its ``assembled_init.pth``. A string: a checkpoint path or URL.
        assembly (str | None): a work dir holding ``assembly.json``, or the file.
            Default: ``work_dirs/<name>/assembly.json`` when it exists.
        device (str | torch.device | None): move the model there.
        model_index (str | None): another ``model-index.yml`` or metafile.
        **kwargs: merged into the ``model`` config (as mmpretrain's ``get_model``).

    Returns:
        The built ``mmpretrain`` ``ImageClassifier`` (eval mode), with ``_config``
        set to its config.
    """
    from mmengine.registry import DefaultScope

    from dery.assembly import resolve_model_cfg
    from dery.assembly.config import use_fixed_assembly
    from dery.assembly.context import is_fixed
    from dery.registry import MODELS
    from dery.utils import get_logger

    info, name = None, None
    if isinstance(model, Config):
        cfg = copy.deepcopy(model)
        name = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else None
    elif isinstance(model, (str, os.PathLike)) and str(model).endswith('.py'):
        cfg = Config.fromfile(str(model))
        name = osp.splitext(osp.basename(str(model)))[0]
    elif isinstance(model, str):
        info = get_model_info(model, model_index)
        if not info.config or not osp.isfile(info.config):
            raise MissingFileError(f"the config of '{info.name}' is missing: {info.config}")
        cfg = Config.fromfile(info.config)
        name = info.name
    else:
        raise TypeError(f'model must be a name, a config path or a Config, got {type(model).__name__}')

    if kwargs:
        cfg.merge_from_dict({'model': kwargs})
    bb = cfg.model.get('backbone') or {}
    work_dir = None
    if bb.get('type') == 'ReassembledBackbone' and bb.get('assembly'):
        path = bb['assembly'] if bb['assembly'] != 'auto' else None
        path = find_assembly(assembly if assembly is not None else path, name)
        if path is None and is_fixed(cfg):  # the config gives its assembly (assembly.blocks): no search
            use_fixed_assembly(cfg)
        elif path is None:
            cfg_hint = info.config if info else (cfg.filename or 'CONFIG')
            raise MissingFileError(
                f"'{name}' is a DeRy config: its architecture is the result of the search, and no "
                f'assembly.json was found (looked in work_dirs/{name}/). Run `python tools/assemble.py '
                f'{cfg_hint}` (tools/train.py does it too), or pass assembly=WORK_DIR or the path of an '
                'assembly.json')
        else:
            work_dir = osp.dirname(osp.abspath(path))
            bb['assembly'] = path
            resolve_model_cfg(cfg, work_dir)
    elif assembly is not None:
        raise ConfigError(f"'{name}' does not build a ReassembledBackbone from an assembly; "
                         'assembly= does not apply')

    checkpoint, weights_note = None, None
    backbone = cfg.model.get('backbone') or {}
    if pretrained is True:
        if info is not None and info.weights:
            checkpoint = info.weights
        elif work_dir is not None:
            checkpoint = _latest_checkpoint(work_dir)
            if checkpoint is None:
                weights_note = (f'assembled_init.pth (zoo blocks, fitted stitches, untrained head: no training '
                                f'checkpoint in {work_dir})')
        else:
            raise ConfigError(f"no weights are known for '{name}'; pass pretrained=PATH")
    elif isinstance(pretrained, (str, os.PathLike)):
        checkpoint = str(pretrained)
    elif pretrained is not False and pretrained is not None:
        raise TypeError(f'pretrained must be a bool or a checkpoint path, got {pretrained!r}')
    use_init = pretrained is True and checkpoint is None and work_dir is not None
    if not use_init:
        backbone.pop('init_cfg', None)  # random init: read no file

    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor', None))
    from dery.utils import quiet_mmengine
    with quiet_mmengine(), DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'dery')):
        net = MODELS.build(cfg.model)
        if use_init:
            net.init_weights()  # mmengine's per-parameter report: at debug level only (DERY_DEBUG=1)
    if checkpoint is not None and osp.isfile(checkpoint):
        from dery.utils import safe_torch_load
        from dery.utils.checkpoint import check_state_dict, state_dict_of
        state = state_dict_of(safe_torch_load(checkpoint))
        check_state_dict(net, state, checkpoint, f"the network of '{name}'"
                         + (f' ({bb["assembly"]})' if bb.get('assembly') else ''))
        net.load_state_dict(state, strict=True)
    elif checkpoint is not None:  # a URL: mmengine downloads it
        from mmengine.runner import load_checkpoint
        with quiet_mmengine():
            load_checkpoint(net, checkpoint, map_location='cpu', logger=get_logger(), strict=True)
    from .inference import model_summary
    summary = 'get_model: ' + model_summary(net, name, checkpoint or (weights_note if use_init else None))
    (get_logger().warning if use_init else get_logger().info)(summary)
    net._config = cfg
    if device is not None:
        net.to(device)
    net.eval()
    return net
