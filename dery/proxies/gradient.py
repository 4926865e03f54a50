"""Gradient-based zero-cost proxies (Abdelfattah et al., ICLR 2021).

``SNIP``, ``GradNorm`` and ``Fisher`` need a cross-entropy loss, hence logits:
when the model outputs features rather than ``[B, num_classes]`` logits, a
temporary linear head, seeded by the proxy's seed (normal std 0.01, zero bias,
like mmpretrain's ``LinearClsHead``), is put on the pooled features for the
duration of the call; it is not part of the model and its weights never enter
the score. ``SynFlow`` is data-free (all-ones input).

All parameters get ``requires_grad=True`` while scoring (frozen zoo blocks count
too); flags, gradients and values are restored afterwards. Scores are averaged
over the batches.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from dery.errors import ConfigError
from dery.registry import PROXIES

from .base import BaseProxy, prunable_weights

__all__ = ['SynFlow', 'SNIP', 'GradNorm', 'Fisher']


class _GradProxy(BaseProxy):
    """Per batch: zero grads, CE loss on logits, backward, read ``_batch_score``."""

    needs_labels = True

    def compute(self, model, batches, device) -> float:
        self._labelled(batches, type(self).__name__)
        num_classes = self._num_classes(batches)
        for p in model.parameters():
            p.requires_grad_(True)
        weights = prunable_weights(model)
        if not weights:
            raise ConfigError(
                f'proxy {type(self).__name__} found no Conv/Linear weight in this model')
        state, scores = {}, []
        for imgs, labels in self._batches_on(batches, device):
            model.zero_grad(set_to_none=True)
            scores.append(self._batch(model, imgs, labels, num_classes, state, weights))
        model.zero_grad(set_to_none=True)
        return float(sum(scores) / len(scores))

    def _batch(self, model, imgs, labels, num_classes, state, weights) -> float:
        self._loss(model, imgs, labels, num_classes, state).backward()
        with torch.no_grad():
            return self._batch_score(weights)

    def _batch_score(self, weights) -> float:
        raise NotImplementedError


@PROXIES.register_module()
class SNIP(_GradProxy):
    """Connection sensitivity ``sum |dL/dw * w|`` over Conv/Linear weights
    (Lee et al. 2019)."""

    def _batch_score(self, weights) -> float:
        return float(sum((w.grad * w).abs().sum(dtype=torch.float64)
                         for w in weights if w.grad is not None))


@PROXIES.register_module()
class GradNorm(_GradProxy):
    """Sum over Conv/Linear layers of the L2 norm of ``dL/dw``."""

    def _batch_score(self, weights) -> float:
        return float(sum(w.grad.double().norm() for w in weights if w.grad is not None))


@PROXIES.register_module()
class Fisher(_GradProxy):
    """Channel Fisher information (Theis et al. 2018, as in Abdelfattah et al.).

    For the output ``a`` of every Conv (channels on dim 1) and Linear (channels
    on the last dim) layer: ``0.5 * mean_batch((sum_spatial a * dL/da)^2)``
    summed over channels and layers.
    """

    def _batch(self, model, imgs, labels, num_classes, state, weights) -> float:
        acc = []

        def hook(module, _inp, out):
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return
            ch = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else out.ndim - 1
            act = out.detach()

            def grad_hook(g):
                prod = (act * g).movedim(ch, 1).double()
                s = prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1)
                acc.append((0.5 * s.pow(2).mean(0)).sum())

            out.register_hook(grad_hook)

        layers = [m for m in model.modules()
                  if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            self._loss(model, imgs, labels, num_classes, state).backward()
        finally:
            for h in handles:
                h.remove()
        return float(sum(acc)) if acc else 0.0


@PROXIES.register_module()
class SynFlow(BaseProxy):
    """Synaptic flow (Tanaka et al. 2020): data-free.

    Weights are replaced by their absolute values, the model runs in float64 and
    eval mode on one all-ones input of the target image size, and the score is
    ``sum(w * dR/dw)`` over Conv/Linear weights with ``R = sum(output)``. The
    weights, dtype and mode are restored exactly afterwards. Only the first
    batch's image shape is used.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault('mode', 'eval')
        super().__init__(**kwargs)

    def compute(self, model, batches, device) -> float:
        model.double()
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        weights = prunable_weights(model)
        if not weights:
            raise ConfigError('proxy SynFlow found no Conv/Linear weight in this model')
        shape = (1,) + tuple(batches[0][0].shape[1:])
        x = torch.ones(shape, dtype=torch.float64, device=device)
        out = self._forward(model, x)
        out.sum().backward()
        with torch.no_grad():
            score = sum((w * w.grad).sum() for w in weights if w.grad is not None)
        return float(self._check(torch.as_tensor(score),
                                 'the SynFlow score (it overflowed float64)'))
