"""Jacov (Mellor et al. 2020, NASWOT v1): correlation of input Jacobians."""
from __future__ import annotations

import torch

from dery.registry import PROXIES

from .base import BaseProxy

__all__ = ['Jacov']


@PROXIES.register_module()
class Jacov(BaseProxy):
    """Score of the correlation matrix of per-sample input Jacobians.

    ``J_i = d sum(f(x)) / d x_i``; ``C = corrcoef(J)``, eigenvalues ``v``;
    batch score ``-sum(log(v + k) + 1 / (v + k))`` with ``k = 1e-5``; the proxy
    is the mean over batches. Networks whose Jacobians are less correlated
    across samples score higher. A sample with a constant (e.g. all-zero)
    Jacobian gets a zero row, so dead networks rank lowest instead of giving NaN.
    Works on logits and on features (the sum of all outputs is differentiated).
    """

    def __init__(self, k: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.k = float(k)

    def compute(self, model, batches, device) -> float:
        for p in model.parameters():
            p.requires_grad_(False)
        scores = []
        for imgs, _ in self._batches_on(batches, device):
            x = imgs.clone().requires_grad_(True)
            out = self._forward(model, x)
            (grad,) = torch.autograd.grad(out.sum(), x)
            J = self._check(grad, 'the input Jacobian').flatten(1).double()
            J = J - J.mean(1, keepdim=True)
            norm = J.norm(dim=1, keepdim=True)
            J = torch.where(norm > 0, J / norm.clamp_min(1e-300), torch.zeros_like(J))
            corr = J @ J.t()
            v = torch.linalg.eigvalsh(corr).clamp_min(0)
            scores.append(float(-(torch.log(v + self.k) + 1.0 / (v + self.k)).sum()))
        return float(sum(scores) / len(scores))
