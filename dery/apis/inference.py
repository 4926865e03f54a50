"""Inference on assembled networks, as mmpretrain's ``init_model`` / ``inference_model``::

    from dery.apis import inference_model, init_model

    model = init_model('work_dirs/tiny_cpu/assembled.py', 'work_dirs/tiny_cpu/iter_40.pth')
    model = init_model(checkpoint='tiny_cpu_20240101-1a2b3c4d.pth')   # a published checkpoint alone
    result = inference_model(model, 'demo.jpg')   # {'pred_label', 'pred_score', 'pred_scores', 'pred_class'}

mmpretrain's ``ImageClassificationInferencer`` does the work (images are read
and transformed with the config's test pipeline); ``mmpretrain.apis.
ImageClassificationInferencer('WORK_DIR/assembled.py', pretrained=CKPT)``
works as well. Building is quiet: one summary line, mmengine's
per-parameter report only at debug level (``DERY_DEBUG=1``).
"""
import copy
import os
import os.path as osp

from mmengine.config import Config

from dery.errors import ConfigError, MissingFileError

__all__ = ['init_model', 'inference_model', 'config_of_checkpoint', 'model_summary']


def model_summary(net, name=None, weights=None):
    """One line naming the network built: its blocks (for an assembled one), parameters, weights."""
    from dery.utils import human
    bb = getattr(net, 'backbone', None)
    specs = getattr(bb, 'specs', None)
    what = type(net).__name__
    if specs:
        what += (f' on {len(specs)} blocks ('
                 + ' -> '.join(f"{s['model']}[{s['start']}..{s['end']}]" for s in specs) + ')')
    params = sum(p.numel() for p in net.parameters())
    head = f'{name}: ' if name else ''
    return f'{head}{what}, {human(params)} params; weights: {weights or "random init"}'


def config_of_checkpoint(checkpoint):
    """The config a checkpoint carries: ``meta['dery_config']`` (``publish_model.py``), else the
    training config mmengine saved (``meta['cfg']``) with the checkpoint's assembly record."""
    from dery.assembly import assembly_of_checkpoint, use_assembly
    from dery.utils import safe_torch_load
    if not osp.isfile(str(checkpoint)):
        raise MissingFileError(f'checkpoint not found: {checkpoint}')
    meta = safe_torch_load(checkpoint, mmap=True).get('meta') or {}
    text = meta.get('dery_config') or meta.get('cfg')
    if not text:
        raise ConfigError(f'{checkpoint} carries no config (neither meta.dery_config nor meta.cfg); give the '
                          "config too: init_model(CONFIG, CHECKPOINT), e.g. the run's WORK_DIR/assembled.py")
    cfg = Config.fromstring(text, '.py')
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone' and 'blocks' not in bb:
        record = assembly_of_checkpoint(checkpoint)
        if record is None:
            raise ConfigError(f'{checkpoint} carries no assembly record; give the config too: '
                              "init_model(WORK_DIR/assembled.py, CHECKPOINT)")
        use_assembly(cfg, record)
    return cfg


def _config(config, checkpoint):
    """The model config of ``config`` (a path or Config), the network of ``checkpoint`` when it says."""
    from dery.assembly import assembly_of_checkpoint, resolve_model_cfg, use_assembly
    if config is None:
        if checkpoint is None:
            raise ConfigError('init_model needs a config, a checkpoint, or both')
        return config_of_checkpoint(checkpoint)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        if not osp.isfile(str(config)):
            raise MissingFileError(f'config not found: {config}')
        cfg = Config.fromfile(str(config))
    else:
        raise TypeError(f'config must be a path or a Config, got {type(config).__name__}')
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone' and bb.get('assembly'):
        # a training config: the network is the checkpoint's (its record), else the work dir's
        record = assembly_of_checkpoint(checkpoint) if checkpoint else None
        if record is not None:
            use_assembly(cfg, record)
        else:
            from dery.utils import work_dir_of
            resolve_model_cfg(cfg, work_dir_of(cfg, cfg.filename))
    return cfg


def init_model(config=None, checkpoint=None, device=None):
    """Build a classifier from a config and/or a checkpoint (eval mode), quietly.

    Args:
        config (str | Config | None): ``WORK_DIR/assembled.py``, a training config
            (the network is the checkpoint's assembly record, else
            ``WORK_DIR/assembly.json``), or None: the config the checkpoint
            carries (a published checkpoint, or one saved by the Runner).
        checkpoint (str | None): weights; None keeps the config's initial
            weights (``assembled_init.pth`` for ``assembled.py``).
        device (str | torch.device | None): move the model there.

    Returns:
        The ``ImageClassifier``, with ``_config`` and ``_dataset_meta`` set
        (what mmpretrain's inferencers read).
    """
    from mmengine.registry import DefaultScope

    from dery.registry import MODELS
    from dery.utils import get_logger, quiet_mmengine, safe_torch_load
    from dery.utils.checkpoint import check_state_dict, state_dict_of
    cfg = _config(config, checkpoint)
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor', None))
    backbone = cfg.model.get('backbone') or {}
    if checkpoint is not None:
        backbone.pop('init_cfg', None)  # the checkpoint holds every weight
    init = backbone.get('init_cfg') is not None
    with quiet_mmengine(), DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'dery')):
        net = MODELS.build(cfg.model)
        if init:
            net.init_weights()
    meta = {}
    if checkpoint is not None:
        ckpt = safe_torch_load(checkpoint)
        meta = (ckpt.get('meta') or {}) if isinstance(ckpt, dict) else {}
        state = state_dict_of(ckpt)
        check_state_dict(net, state, checkpoint, 'the network of ' + (str(config) if config is not None else
                                                                      f'the config in {checkpoint}'))
        net.load_state_dict(state, strict=True)
    net._config = cfg
    net._dataset_meta = dict(meta.get('dataset_meta') or {})
    if device is not None:
        net.to(device)
    net.eval()
    weights = checkpoint or (backbone['init_cfg'].get('checkpoint') if init else None)
    get_logger().info('init_model: ' + model_summary(net, weights=weights))
    return net


def inference_model(model, image, checkpoint=None, device=None, classes=None):
    """Classify ``image`` with an assembled network.

    Args:
        model (nn.Module | str | Config): a built classifier (:func:`init_model`,
            :func:`dery.apis.get_model`), or what :func:`init_model` takes as
            its config (then ``checkpoint`` gives the weights); a ``.pth`` path
            alone is a checkpoint that carries its config.
        image (str | ndarray | list): an image file, an ``H x W x 3`` uint8 array
            (BGR, as ``mmcv.imread`` gives), or a list of them.
        classes (list[str] | None): class names (default: the checkpoint's).

    Returns:
        dict (a list of them for a list): ``pred_label``, ``pred_score``,
        ``pred_scores`` and, when the classes are known, ``pred_class``.
    """
    import torch.nn as nn
    from mmpretrain.apis import ImageClassificationInferencer
    if not isinstance(model, nn.Module):
        if isinstance(model, (str, os.PathLike)) and str(model).endswith('.pth') and checkpoint is None:
            model = init_model(None, str(model), device=device)
        else:
            model = init_model(model, checkpoint, device=device)
    if getattr(model, '_config', None) is None:
        raise ConfigError('inference_model needs a model built by init_model / get_model (it reads the test '
                          'pipeline from model._config)')
    if classes is None:
        classes = (getattr(model, '_dataset_meta', None) or {}).get('classes')
    inferencer = ImageClassificationInferencer(model, pretrained=False, device=device, classes=classes)
    many = isinstance(image, (list, tuple))
    images = list(image) if many else [image]
    preds = []
    for batch in inferencer.preprocess(images, batch_size=8):  # the inferencer's steps, without its progress bar
        preds.extend(inferencer.forward(batch))
    results = inferencer.postprocess(preds, None)
    return results if many else results[0]
