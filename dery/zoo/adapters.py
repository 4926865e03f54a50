"""Zoo adapters: build a (pretrained) network with each library's own loader.

Every adapter turns a :class:`~dery.zoo.entry.ZooEntry` into an ``nn.Module``:

* ``timm``: ``timm.create_model(model, pretrained=..., pretrained_cfg_overlay=...)``;
  ``weights`` may be a timm tag (``resnet50.a1_in1k`` in ``model``), an
  ``hf-hub:`` id, a URL or a local file.
* ``mmpretrain``: ``mmpretrain.get_model(model, pretrained=...)`` with a
  metafile name (weights from the metafile, a URL or a path) or a model config
  dict; the backbone is used.
* ``torchvision``: ``torchvision.models.get_model(model, weights=...)`` with a
  weight enum name (``IMAGENET1K_V2``, ``DEFAULT``), a URL or a local file.
* ``local``: a checkpoint file loaded into an ``arch`` of any of the above.

``pretrained=False`` builds a random-init model and touches neither the network
nor the disk. When weights cannot be fetched (offline), the error names the
file and where to put it.
"""
import contextlib
import os.path as osp

import torch
import torch.nn as nn

from dery.errors import ConfigError, DeryError
from dery.registry import ZOO_ADAPTERS
from dery.utils import safe_torch_load
from .sources import hub_cache_file, is_url, looks_like_path


class WeightsUnavailableError(DeryError, RuntimeError):
    """Pretrained weights could not be found or fetched."""


def _check_local(path, entry):
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise WeightsUnavailableError(
            f"weights for zoo model '{entry.name}' not found: {path}; put the checkpoint there or "
            'fix `weights` in model_zoo.yml')
    return path


def _offline_error(entry, source, err, cache=None):
    msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    where = f' or put the file at {cache}' if cache else ''
    return WeightsUnavailableError(
        f"could not fetch weights for zoo model '{entry.name}' from {source} ({msg}). "
        f'Offline? Download it on a connected machine and set `weights: /path/to/file` in '
        f'model_zoo.yml{where}.')


def _strip_state_dict(ckpt):
    sd = ckpt
    for key in ('state_dict', 'model', 'module', 'model_state'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError('checkpoint holds no state dict')
    out = {}
    for k, v in sd.items():
        for prefix in ('module.', 'backbone.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_weights_into(model, path, entry):
    """Load a local checkpoint into ``model`` with the safe loader; clear errors."""
    path = _check_local(path, entry)
    try:
        ckpt = safe_torch_load(path, allow_pickle=entry.allow_pickle)
    except RuntimeError as e:
        raise WeightsUnavailableError(f"zoo model '{entry.name}': {e}") from None
    if path.endswith('.safetensors'):  # pragma: no cover - safetensors path
        from safetensors.torch import load_file
        ckpt = load_file(path)
    sd = _strip_state_dict(ckpt)
    own = model.state_dict()
    head_keys = [k for k in sd if k not in own and k.split('.')[0] in ('fc', 'head', 'classifier', 'heads')]
    for k in head_keys:  # a classifier the backbone does not have is fine
        sd.pop(k)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in own
             if k in sd and hasattr(sd[k], 'shape') and tuple(sd[k].shape) != tuple(own[k].shape)]
    # a missing classifier is fine: DeRy never uses the zoo model's head
    missing = [k for k in missing if k.split('.')[0] not in ('fc', 'head', 'classifier', 'heads')]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys (e.g. {missing[:3]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})')
        if wrong:
            parts.append(f'{len(wrong)} shape mismatches (e.g. {wrong[:2]})')
        raise WeightsUnavailableError(
            f"checkpoint {path} does not fit zoo model '{entry.name}' ({type(model).__name__}): "
            f'{"; ".join(parts)}. Check that `arch`/`model`/`kwargs` match the checkpoint.')
    model.load_state_dict(sd, strict=False)
    return model


def _size_kwargs(entry, input_size, key='img_size'):
    """``{key: H}`` when a ViT/Swin entry must be built for ``input_size`` and its kwargs do not say so.

    Transformers fix their patch grid (and position embeddings, windows) at
    construction: timm and mmpretrain take ``img_size``, torchvision ViTs
    ``image_size``. CNNs run at any size.
    """
    if input_size is None or entry.family not in ('vit', 'swin') or key in entry.kwargs:
        return {}
    h, w = int(input_size[1]), int(input_size[2])
    return {key: h if h == w else (h, w)}


class BaseZooAdapter:
    """Builds the ``nn.Module`` of a zoo entry. Subclass and register to add a source.

    ``build(entry, pretrained, input_size)``: ``input_size`` (``(C, H, W)`` or
    None) is the size the zoo runs at; an adapter passes it to models that fix
    their input size at construction.
    """

    def build(self, entry, pretrained=True, input_size=None):
        raise NotImplementedError

    def default_input_size(self, entry, model):
        return tuple(entry.input_size) if entry.input_size else (3, 224, 224)


@ZOO_ADAPTERS.register_module(name='timm')
class TimmAdapter(BaseZooAdapter):

    def build(self, entry, pretrained=True, input_size=None):
        import timm
        kwargs = dict(entry.kwargs, **_size_kwargs(entry, input_size))
        if not pretrained:
            return timm.create_model(entry.model, pretrained=False, **kwargs)
        w = entry.weights
        if w and looks_like_path(w):
            model = timm.create_model(entry.model, pretrained=False, **kwargs)
            return load_weights_into(model, w, entry)
        overlay = {}
        if w and w.startswith('hf-hub:'):
            overlay = dict(hf_hub_id=w[len('hf-hub:'):])
        elif w and is_url(w):
            overlay = dict(url=w, hf_hub_id=None)
        elif w:
            overlay = dict(hf_hub_id=w)
        try:
            return timm.create_model(entry.model, pretrained=True, pretrained_cfg_overlay=overlay or None,
                                     **kwargs)
        except Exception as e:  # noqa: BLE001 - network / hub errors of all kinds
            src = w or f'timm default weights of {entry.model}'
            cache = hub_cache_file(w) if is_url(w) else None
            raise _offline_error(entry, src, e, cache) from None

    def default_input_size(self, entry, model):
        if entry.input_size:
            return tuple(entry.input_size)
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        return tuple(cfg.get('input_size', (3, 224, 224)))


def _unmasked(backbone):
    """mmpretrain's masked-image-modelling backbones (``MAEViT``, ``MFFViT``, ...) hide 75% of the tokens at
    random in ``forward(x)`` (their pre-training task) unless called with ``mask=None``. A zoo model computes
    the network's function on the whole image (the blocks it gives run on all tokens in a reassembled
    network), so its forward is bound to ``mask=None``."""
    import functools
    import inspect
    try:
        mask = inspect.signature(backbone.forward).parameters.get('mask')
    except (TypeError, ValueError):
        return backbone
    if mask is not None and mask.default is True:
        backbone.forward = functools.partial(type(backbone).forward, backbone, mask=None)
    return backbone


def _not_preprocessor_note(record):
    """False for mmpretrain's 'Because batch augmentations are enabled ... `to_onehot`' line: a zoo model
    is built from a training config whose data preprocessor DeRy throws away with the head (the
    backbone is kept), so the line would only repeat at every build of such a model."""
    return not record.getMessage().startswith('Because batch augmentations are enabled')


@contextlib.contextmanager
def _without_preprocessor_note():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    logger.addFilter(_not_preprocessor_note)
    try:
        yield
    finally:
        logger.removeFilter(_not_preprocessor_note)


@ZOO_ADAPTERS.register_module(name='mmpretrain')
class MMPretrainAdapter(BaseZooAdapter):
    """mmpretrain models; the backbone is returned (heads are not reused)."""

    def build(self, entry, pretrained=True, input_size=None):
        import mmpretrain
        from mmpretrain.registry import MODELS
        kwargs = dict(entry.kwargs)
        if isinstance(entry.model, dict):
            size = {} if 'img_size' in entry.model else _size_kwargs(entry, input_size)
            model = MODELS.build(dict(entry.model, **kwargs, **size))
            if pretrained and entry.weights:
                model = self._load(model, entry)
        else:
            size = _size_kwargs(entry, input_size) if 'img_size' not in (kwargs.get('backbone') or {}) else {}
            if size:
                kwargs['backbone'] = dict(kwargs.get('backbone') or {}, **size)
            with _without_preprocessor_note():
                model = mmpretrain.get_model(entry.model, pretrained=False, **kwargs)
            if pretrained:
                model = self._load(model, entry)
        return _unmasked(getattr(model, 'backbone', model))

    def _load(self, model, entry):
        from mmengine.runner import load_checkpoint
        from mmpretrain.apis.model import ModelHub
        w = entry.weights
        if w is None and isinstance(entry.model, str):
            w = ModelHub.get(entry.model).weights
        if not w:
            raise WeightsUnavailableError(f"zoo model '{entry.name}' has no weights in mmpretrain's "
                                          'metafile; set `weights` in model_zoo.yml')
        if is_url(w):
            cache = hub_cache_file(w)
            if osp.isfile(cache):
                w = cache
            else:
                try:
                    load_checkpoint(model, w, map_location='cpu', logger='silent')
                    return model
                except Exception as e:  # noqa: BLE001
                    raise _offline_error(entry, w, e, cache) from None
        w = _check_local(w, entry)
        target = getattr(model, 'backbone', model) if not hasattr(model, 'data_preprocessor') else model
        try:
            sd = _strip_state_dict(safe_torch_load(w, allow_pickle=entry.allow_pickle))
        except RuntimeError as e:
            raise WeightsUnavailableError(f"zoo model '{entry.name}': {e}") from None
        has_prefix = any(k.startswith('backbone.') for k in target.state_dict())
        if has_prefix:
            sd = {f'backbone.{k}' if not k.startswith(('head.', 'neck.', 'backbone.')) else k: v
                  for k, v in sd.items()}
        missing, unexpected = target.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith(('head.', 'neck.', 'target', 'momentum'))]
        if missing:
            raise WeightsUnavailableError(
                f"checkpoint {w} does not fit zoo model '{entry.name}': {len(missing)} missing keys "
                f'(e.g. {missing[:3]}); check `model`/`kwargs`.')
        return model


@ZOO_ADAPTERS.register_module(name='torchvision')
class TorchvisionAdapter(BaseZooAdapter):

    def build(self, entry, pretrained=True, input_size=None):
        import torchvision
        kwargs = dict(entry.kwargs)
        if entry.family == 'vit':  # torchvision's Swin runs at any size
            kwargs.update(_size_kwargs(entry, input_size, 'image_size'))
        if not pretrained:
            return torchvision.models.get_model(entry.model, weights=None, **kwargs)
        w = entry.weights or 'DEFAULT'
        if looks_like_path(w):
            model = torchvision.models.get_model(entry.model, weights=None, **kwargs)
            return load_weights_into(model, w, entry)
        if is_url(w):
            model = torchvision.models.get_model(entry.model, weights=None, **kwargs)
            cache = hub_cache_file(w)
            if not osp.isfile(cache):
                try:
                    torch.hub.download_url_to_file(w, cache, progress=False)
                except Exception as e:  # noqa: BLE001
                    raise _offline_error(entry, w, e, cache) from None
            return load_weights_into(model, cache, entry)
        try:
            enum = torchvision.models.get_model_weights(entry.model)[w.split('.')[-1]]
        except (KeyError, ValueError):
            names = list(torchvision.models.get_model_weights(entry.model).__members__)
            raise WeightsUnavailableError(f"zoo model '{entry.name}': torchvision has no weights "
                                          f'{w!r} for {entry.model}; choose one of {names}') from None
        cache = hub_cache_file(enum.url)
        try:
            return torchvision.models.get_model(entry.model, weights=enum, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _offline_error(entry, enum.url, e, cache) from None


@ZOO_ADAPTERS.register_module(name='local')
class LocalAdapter(BaseZooAdapter):
    """A checkpoint file plus an architecture: ``arch: {library, model, kwargs}``."""

    def build(self, entry, pretrained=True, input_size=None):
        from .entry import ZooEntry
        arch = dict(entry.arch)
        library = arch.pop('library', 'timm')
        if library not in ('timm', 'mmpretrain', 'torchvision'):
            raise ConfigError(f"zoo model '{entry.name}': arch.library must be timm, mmpretrain or "
                             f'torchvision, got {library!r}')
        inner = ZooEntry(name=entry.name, adapter=library, model=arch.pop('model', None),
                         family=entry.family, kwargs=dict(arch.pop('kwargs', {}), **entry.kwargs))
        model = ZOO_ADAPTERS.build(dict(type=library)).build(inner, pretrained=False, input_size=input_size)
        if pretrained:
            model = load_weights_into(model, entry.weights, entry)
        return model

    def default_input_size(self, entry, model):
        if entry.input_size:
            return tuple(entry.input_size)
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        return tuple(cfg.get('input_size', (3, 224, 224)))


def build_zoo_model(name_or_cfg, pretrained=True, zoo=None, input_size=None):
    """Build a :class:`~dery.zoo.ZooModel` from a zoo name or an entry dict.

    ``pretrained=False`` gives a random-init model without touching the network
    or the disk (tests, tiny configs, architecture-only work). ``input_size``
    (``(C, H, W)``): the size the model will run at; transformers are built for
    it (``img_size``), and a model that cannot run at it is refused in one line.
    """
    import inspect
    import zlib

    from .entry import ZooError, resolve_entry
    from .zoo_model import ZooModel
    entry = resolve_entry(name_or_cfg, zoo)
    adapter = ZOO_ADAPTERS.build(dict(type=entry.adapter))
    size = tuple(int(v) for v in input_size) if input_size is not None else None
    kwargs = dict(input_size=size) if 'input_size' in inspect.signature(adapter.build).parameters else {}
    try:
        if pretrained:
            model = adapter.build(entry, pretrained=True, **kwargs)
        else:
            # random init seeded by the entry name: every run and every rank builds the same model,
            # so similarity caches, partition.json and assembly.json are reproducible and resumable
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(entry.name.encode()))
                model = adapter.build(entry, pretrained=False, **kwargs)
    except (TypeError, AssertionError, RuntimeError) as e:
        if size is None or isinstance(e, DeryError):
            raise
        raise ZooError(f"zoo model '{entry.name}' cannot be built for input size {list(size)} "
                       f'({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}); give it `kwargs` '
                       'that fit (e.g. img_size, window_size) or change zoo.input_size') from None
    if not isinstance(model, nn.Module):
        raise TypeError(f'zoo adapter {entry.adapter} returned {type(model).__name__}, not an nn.Module')
    zm = ZooModel(entry.name, model, family=entry.family, nodes=entry.nodes,
                  input_size=size or adapter.default_input_size(entry, model), entry=entry)
    if size is not None:
        zm.check_input_size()
    return zm
