"""NASWOT (Mellor et al., ICML 2021): the paper's default proxy."""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn as nn

from dery.errors import ConfigError
from dery.registry import PROXIES
from dery.utils import get_logger

from .base import BaseProxy

__all__ = ['NASWOT', 'activation_modules', 'sign_agreements']

# Activation modules whose output is > 0 exactly where their input is > 0, so
# the code read from the output equals the pre-activation sign (inplace-safe).
# Matched by class name so that timm's and mmcv's own classes count too.
_ACT_NAMES = {
    'relu', 'relu6', 'leakyrelu', 'prelu', 'rrelu', 'elu', 'celu', 'selu', 'gelu',
    'gelutanh', 'quickgelu', 'silu', 'swish', 'mish', 'hardswish', 'hswish',
}


def activation_modules(model: nn.Module) -> List[nn.Module]:
    """The hookable rectifier-like activation modules of ``model``.

    Captured: ``nn.ReLU``, ``ReLU6``, ``LeakyReLU``, ``PReLU``, ``RReLU``, ``ELU``,
    ``CELU``, ``SELU``, ``GELU``, ``SiLU``, ``Mish``, ``Hardswish`` and same-named
    classes from timm/mmcv (``GELUTanh``, ``QuickGELU``, ``Swish``, ``HSwish``).
    Not captured: activations called functionally inside another module's
    ``forward`` (``F.gelu(x)``), and gates (``Sigmoid``, ``Hardsigmoid``).
    """
    return [m for m in model.modules() if type(m).__name__.lower() in _ACT_NAMES]


def _linear_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


_UNITS_PER_SLICE = 1 << 16


@torch.no_grad()
def sign_agreements(x):
    """``K [n, n]`` (float64): on how many of the ``U`` units rows i and j of ``x [n, U]`` (activations, or
    their codes as booleans) agree in sign, ``c c^T + (1 - c)(1 - c)^T`` with ``c = x > 0``.

    Computed as ``2 c c^T - r_i - r_j + U`` (``r``, the codes' row sums, is the diagonal of ``c c^T``) in
    slices of 64k units, so the codes of a slice stay in cache (2x faster on a 32 x 256 x 56 x 56 output
    than one product). Exact: every slice's counts are integers below 2^24.
    """
    g = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for part in x.split(_UNITS_PER_SLICE, 1):
        c = (part > 0).float()
        g += (c @ c.t()).double()
    r = g.diagonal()
    return 2 * g - r[:, None] - r[None, :] + x.shape[1]


@PROXIES.register_module()
class NASWOT(BaseProxy):
    """Log-determinant of the binary activation-code kernel (Mellor et al. 2021).

    For each batch, every unit of every hooked activation gives each sample a
    bit ``c = pre-activation > 0`` (for GELU/SiLU/... too: their output is
    positive exactly when the input is). With codes ``c_i`` over all ``U``
    units, ``K_ij = U - hamming(c_i, c_j)``, and the batch score is
    ``log det K``; the proxy is the mean over batches.

    What is captured: the modules listed in :func:`activation_modules`. When a
    model has none (or none of them runs), e.g. a transformer calling
    ``F.gelu`` inside its MLP, the sign patterns of all Linear/Conv outputs are
    used instead, so such models still score meaningfully (logged once).

    ``K`` is singular when two samples share a code (dead or collapsed
    networks: all-zero codes); a ridge ``ridge * U * I`` keeps the score finite,
    so such networks rank lowest instead of scoring ``-inf``. Scores of healthy
    networks move by far less than their differences.

    Args:
        ridge: relative ridge added to ``K / U`` (default 1e-6).
        **kwargs: see :class:`~dery.proxies.base.BaseProxy`.
    """

    def __init__(self, ridge: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.ridge = float(ridge)

    def compute(self, model, batches, device) -> float:
        for p in model.parameters():
            p.requires_grad_(False)
        acts = activation_modules(model)
        scores = []
        for imgs, _ in self._batches_on(batches, device):
            K, units = self._kernel(model, imgs, acts)
            if units == 0:
                if acts:
                    get_logger().info(
                        f'NASWOT: none of the {len(acts)} activation modules ran (functional '
                        'activations?); using the sign patterns of Linear/Conv outputs')
                else:
                    get_logger().info(
                        'NASWOT: no activation module found; using the sign patterns of '
                        'Linear/Conv outputs')
                acts = _linear_modules(model)
                K, units = self._kernel(model, imgs, acts)
                if units == 0:
                    raise ConfigError(
                        'proxy NASWOT found no activation, Linear or Conv module to hook in '
                        'this model; use another proxy (Jacov, SynFlow)')
            scores.append(self._logdet(K, units))
        return float(sum(scores) / len(scores))

    def _kernel(self, model, imgs, modules):
        B = imgs.shape[0]
        state = dict(K=torch.zeros(B, B, dtype=torch.float64, device=imgs.device), units=0)

        def hook(_module, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.shape[0] != B:
                return
            flat = out.detach().flatten(1)
            state['K'] += sign_agreements(flat)
            state['units'] += flat.shape[1]

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            with torch.no_grad():
                self._forward(model, imgs)
        finally:
            for h in handles:
                h.remove()
        return state['K'], state['units']

    def _logdet(self, K: torch.Tensor, units: int) -> float:
        B = K.shape[0]
        Kn = K / units + self.ridge * torch.eye(B, dtype=K.dtype, device=K.device)
        sign, logabs = torch.linalg.slogdet(Kn)
        if sign <= 0:  # numerically indefinite: the smallest possible score
            return B * math.log(units) + B * math.log(self.ridge)
        return float(logabs) + B * math.log(units)
