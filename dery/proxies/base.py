"""Base class of the training-free proxies, and the model-state guard.

Every proxy is used as::

    proxy = PROXIES.build(dict(type='NASWOT', num_batches=5, batch_size=32, seed=0))
    score = proxy.score(model, data)   # float, higher is better

``model`` maps images ``[B, 3, H, W]`` to logits ``[B, num_classes]`` or to
features (a backbone: ``[B, C]``, ``[B, C, H, W]``, tokens ``[B, N, C]``, or
Swin's ``[B, H, W, C]`` with ``feature_format='swin'``; a tuple/list output
counts by its last element).
``data`` is anything :func:`~dery.proxies.sample_batches` takes.

While scoring, the model is moved to ``device`` (CUDA when available) and put
in ``mode`` (``'train'``: batch-statistics BatchNorm as in the NASWOT paper, with
dropout/drop-path switched off; ``'eval'``). Afterwards everything is restored
exactly: parameters (values, dtype, device), gradients (None stays None),
``requires_grad`` flags, buffers (BN running stats), each module's
``training`` flag, and the global torch/CUDA/numpy/python RNG states.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dery.errors import ConfigError
from dery.utils import get_logger
from dery.zoo.layout import FAMILIES, pool

from .data import ProxyBatches, sample_batches

__all__ = ['BaseProxy', 'preserve_model_state', 'pool_features', 'model_output', 'last_tensor',
           'prunable_weights']


@contextmanager
def preserve_model_state(model: nn.Module, device: Optional[torch.device] = None
                         ) -> Iterator[torch.device]:
    """Snapshot the model, optionally move it to ``device``, restore on exit.

    Restores parameter data (value, dtype and device), gradients,
    ``requires_grad``, every buffer (persistent or not), each module's
    ``training`` flag, and the global RNG states (torch CPU and CUDA, numpy,
    python ``random``). Yields the device the model runs on.
    """
    params = list(dict.fromkeys(model.parameters()))
    saved_params = [(p, p.data.clone(), None if p.grad is None else p.grad.clone(),
                     p.requires_grad) for p in params]
    clones = {}  # one clone per tensor, so shared buffers stay shared
    saved_buffers = [(m, name, None if b is None else clones.setdefault(id(b), b.clone()))
                     for m in model.modules() for name, b in m._buffers.items()]
    modes = [(m, m.training) for m in model.modules()]
    tensors = params + [b for _, _, b in saved_buffers if b is not None]
    devices = {t.device for t in tensors}
    run_device = next(iter(devices)) if devices else torch.device('cpu')
    py_state, np_state = random.getstate(), np.random.get_state()
    if device is not None:
        device = torch.device(device)
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
    uses_cuda = torch.cuda.is_available() and (
        torch.cuda.is_initialized() or (device is not None and device.type == 'cuda'))
    cuda_devices = list(range(torch.cuda.device_count())) if uses_cuda else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            if device is not None and devices != {device}:
                if len(devices) > 1:
                    get_logger().warning(
                        'proxy: the model spans several devices; scoring it where it is')
                else:
                    model.to(device)
                    run_device = device
            yield run_device
        finally:
            with torch.no_grad():
                for p, data, grad, req in saved_params:
                    p.grad = None
                    p.data = data
                    p.grad = grad
                    p.requires_grad_(req)
                for m, name, b in saved_buffers:
                    m._buffers[name] = b
            for m, flag in modes:
                m.training = flag
            random.setstate(py_state)
            np.random.set_state(np_state)


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model; a tuple/list output counts by its last tensor."""
    return last_tensor(model(x))


def last_tensor(out) -> torch.Tensor:
    """The tensor a model output stands for: itself, or the last tensor of a tuple/list/dict."""
    if isinstance(out, dict):
        out = [v for v in out.values() if isinstance(v, torch.Tensor)]
    while isinstance(out, (tuple, list)):
        if not out:
            raise ConfigError('proxy: the model returned an empty tuple/list')
        out = out[-1]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f'proxy: the model returned {type(out).__name__}; it must return a tensor '
            '(logits or features) or a tuple of tensors')
    return out


#: ``feature_format`` names of the layouts (torch / NHWC spelling -> DeRy family).
_FORMAT_ALIASES = dict(nchw='cnn', nhwc='swin', tokens='vit')


def feature_family(feature_format) -> str:
    """The :mod:`dery.zoo.layout` family a ``feature_format`` names."""
    fam = _FORMAT_ALIASES.get(feature_format, feature_format)
    if fam not in FAMILIES:
        raise ConfigError(f'proxy feature_format must be a layout family ({", ".join(FAMILIES)}) or one of '
                         f'{", ".join(_FORMAT_ALIASES)}, got {feature_format!r}')
    return fam


def pool_features(feat: torch.Tensor, feature_format: str = 'cnn') -> torch.Tensor:
    """Pool a model output to ``[B, C]`` with :func:`dery.zoo.layout.pool`.

    ``[B, C]`` is kept; ``[B, N, C]`` tokens -> mean over tokens; a 4-D output
    is read in the declared layout: ``'cnn'``/``'nchw'`` (default: torch's
    channels-first, what necks and ``ReassembledBackbone`` return) or
    ``'swin'``/``'nhwc'``. The layout is declared, never guessed from the sizes.
    """
    if feat.ndim > 4:
        return feat.flatten(2).mean(-1)
    return pool(feat, feature_family(feature_format), 'avg')


def prunable_weights(model: nn.Module) -> List[torch.nn.Parameter]:
    """Weights of Conv/Linear layers (and MultiheadAttention's in-projection),
    the layers the gradient proxies are defined on (Abdelfattah et al. 2021)."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if m.weight is not None:
                out.append(m.weight)
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append(m.in_proj_weight)
    return list(dict.fromkeys(out))


def _is_dropout(m: nn.Module) -> bool:
    if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout)):
        return True
    name = type(m).__name__.lower()
    return name.startswith('drop') and ('path' in name or 'block' in name)


class BaseProxy:
    """Common machinery of the training-free proxies.

    Args:
        num_batches: target batches to score on (paper: 5).
        batch_size: samples per batch (paper: 32).
        seed: seeds the data subset, the temporary head and anything random.
        device: ``None``: CUDA when available, else CPU.
        mode: ``'train'`` (default: BatchNorm uses batch statistics, dropout and
            drop-path are off) or ``'eval'``.
        preprocess: passed to :func:`sample_batches` for dict (mmengine) data.
        num_classes: classes of the target task, for the label-based proxies;
            None: from the data set's metainfo, else max label + 1.
        output: ``'auto'`` (an output ``[B, num_classes]`` is logits, anything
            else features), ``'logits'`` or ``'features'``.
        feature_format: the layout of 4-D feature outputs, see
            :func:`pool_features` (default ``'cnn'``, channels first).
    """

    name = 'proxy'
    #: whether the proxy needs a loss on labelled logits
    needs_labels = False

    def __init__(self, num_batches: int = 5, batch_size: int = 32, seed: int = 0,
                 device: Optional[str] = None, mode: str = 'train', preprocess=None,
                 num_classes: Optional[int] = None, output: str = 'auto',
                 feature_format: str = 'cnn'):
        if mode not in ('train', 'eval'):
            raise ConfigError(f"proxy mode must be 'train' or 'eval', got {mode!r}")
        if output not in ('auto', 'logits', 'features'):
            raise ConfigError(
                f"proxy output must be 'auto', 'logits' or 'features', got {output!r}")
        feature_family(feature_format)
        self.num_batches = int(num_batches)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = device
        self.mode = mode
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.output = output
        self.feature_format = feature_format

    def __repr__(self):
        return (f'{type(self).__name__}(num_batches={self.num_batches}, '
                f'batch_size={self.batch_size}, seed={self.seed}, mode={self.mode!r})')

    # ---------------------------------------------------------------- public
    def sample(self, data) -> ProxyBatches:
        """The seeded batches this proxy scores on (reuse them across models)."""
        return sample_batches(data, self.num_batches, self.batch_size, self.seed,
                              preprocess=self.preprocess)

    def score(self, model: nn.Module, data) -> float:
        """Score ``model`` on ``data``; higher is better. The model is left as found.

        Raises:
            ValueError: the model produced NaN/inf, or the score is not finite.
        """
        batches = self.sample(data)
        device = torch.device(self.device) if self.device is not None else torch.device(
            'cuda' if torch.cuda.is_available() else 'cpu')
        with preserve_model_state(model, device) as run_device:
            # inside the forked RNGs: nothing leaks to the global state
            torch.default_generator.manual_seed(self.seed)
            if run_device.type == 'cuda':
                torch.cuda.manual_seed_all(self.seed)
            self._set_mode(model)
            with torch.enable_grad():  # the gradient proxies work under no_grad() too
                value = self.compute(model, batches, run_device)
        value = float(value)
        if not math.isfinite(value):
            self._fail('nan' if math.isnan(value) else 'inf',
                       'the score itself is not finite')
        return value

    def compute(self, model: nn.Module, batches: ProxyBatches,
                device: torch.device) -> float:
        """The proxy on prepared batches (model already on ``device``, in mode)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def _set_mode(self, model: nn.Module) -> None:
        model.train(self.mode == 'train')
        if self.mode == 'train':
            for m in model.modules():
                if _is_dropout(m):
                    m.training = False

    def _fail(self, kind: str, detail: str):
        raise ConfigError(
            f'proxy {type(self).__name__} produced {kind} on this model: {detail}; '
            "check the model's output / the input normalisation")

    def _check(self, t: torch.Tensor, what: str = "the model's output") -> torch.Tensor:
        if not torch.isfinite(t).all():
            kind = 'nan' if torch.isnan(t).any() else 'inf'
            self._fail(kind, f'{what} contains {kind} values')
        return t

    def _forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._check(model_output(model, x))

    def _num_classes(self, batches: ProxyBatches) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        if batches.num_classes:
            return int(batches.num_classes)
        return int(max(int(lab.max()) for _, lab in batches)) + 1

    @staticmethod
    def _labelled(batches: ProxyBatches, name: str) -> None:
        if any(lab is None for _, lab in batches):
            raise ConfigError(
                f'proxy {name} needs class labels, but the target data has none; use '
                'NASWOT, Jacov or SynFlow, or give (image, label) data')

    def _logits(self, out: torch.Tensor, num_classes: int, state: dict) -> torch.Tensor:
        """Logits of an output: the output itself, or a temporary seeded linear
        head on the pooled features (created once per ``score`` call, in
        ``state['head']``, never part of the model nor of the score)."""
        if self.output == 'logits' or (
                self.output == 'auto' and out.ndim == 2 and out.shape[1] == num_classes):
            if out.ndim != 2 or out.shape[1] != num_classes:
                raise ConfigError(
                    f"proxy {type(self).__name__}: output='logits' but the model returns "
                    f'{tuple(out.shape)}, not [B, {num_classes}]')
            return out
        feat = pool_features(out, self.feature_format)
        head = state.get('head')
        if head is None:
            g = torch.Generator().manual_seed(self.seed)
            weight = torch.randn(num_classes, feat.shape[1], generator=g) * 0.01
            head = nn.Linear(feat.shape[1], num_classes).to(feat.device, feat.dtype)
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.zero_()
            state['head'] = head
        return head(feat)

    def _loss(self, model, imgs, labels, num_classes, state) -> torch.Tensor:
        logits = self._logits(self._forward(model, imgs), num_classes, state)
        if int(labels.max()) >= num_classes or int(labels.min()) < 0:
            raise ConfigError(
                f'proxy {type(self).__name__}: labels outside 0..{num_classes - 1}; set '
                'num_classes to the number of target classes')
        loss = F.cross_entropy(logits.float(), labels)
        return self._check(loss, 'the loss')

    @staticmethod
    def _batches_on(batches, device) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        for imgs, labels in batches:
            yield imgs.to(device), None if labels is None else labels.to(device)
