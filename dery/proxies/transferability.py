"""Transferability estimators as proxies: ``LogME``, ``HScore``, ``TransRate``, ``GBC``.

Each scores a candidate network by its pooled penultimate features on the
labelled target batches::

    proxy = PROXIES.build(dict(type='LogME', num_batches=5, batch_size=32, seed=0))
    score = proxy.score(model, data)          # float, higher is better
    value = proxy.estimate(features, labels)  # the estimator on given [N, C] features

Features: when the model has ``extract_feat`` (an mmpretrain ``ImageClassifier``:
backbone + neck), its last output, else the model's output; either is pooled to
``[B, C]`` with :func:`~dery.proxies.base.pool_features`. These estimators are
forward-only: they run in ``'eval'`` mode by default (BatchNorm running
statistics, the features a fine-tuning run starts from) and under
``torch.no_grad()``. The features of all proxy batches are gathered first and
the estimator runs once on all of them, on the CPU in float64.

Only the classes present in the batches count. Input the estimator cannot be
computed on (fewer than 2 classes, a class with too few samples for a variance)
raises a ``ValueError`` saying what is needed, never a silent 0 or NaN.
Constant (dead) features are valid input: they get the estimator's lowest value.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

from dery.errors import ConfigError
from dery.registry import PROXIES
from dery.utils import get_logger

from .base import BaseProxy, last_tensor, model_output, pool_features

__all__ = ['LogME', 'HScore', 'TransRate', 'GBC']

_EPS = float(np.finfo(np.float64).eps)


class _FeatureProxy(BaseProxy):
    """Gathers pooled features and labels over all batches, then ``_estimate``.

    Args:
        **kwargs: see :class:`~dery.proxies.base.BaseProxy`; ``mode`` defaults
            to ``'eval'`` here.
    """

    needs_labels = True
    #: the fewest samples every class needs (2 where a per-class variance is used)
    min_per_class = 1

    def __init__(self, **kwargs):
        kwargs.setdefault('mode', 'eval')
        super().__init__(**kwargs)

    # ---------------------------------------------------------------- public
    def compute(self, model, batches, device) -> float:
        self._labelled(batches, type(self).__name__)
        feats, labels = self.features(model, batches, device)
        return self.estimate(feats, labels)

    def features(self, model, batches, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pooled features ``[N, C]`` (float64, CPU) and labels ``[N]`` of all batches."""
        feats, labels = [], []
        with torch.no_grad():
            for imgs, lab in self._batches_on(batches, device):
                if callable(getattr(model, 'extract_feat', None)):
                    out = last_tensor(model.extract_feat(imgs))
                else:
                    out = model_output(model, imgs)
                f = pool_features(out, self.feature_format)
                f = self._check(f.detach(), "the model's features")
                feats.append(f.reshape(f.shape[0], -1).double().cpu())
                labels.append(lab.cpu())
        return torch.cat(feats), torch.cat(labels)

    def estimate(self, features, labels) -> float:
        """The estimator on features ``[N, C]`` and integer labels ``[N]``.

        Raises:
            ValueError: non-finite features or score, fewer than 2 classes, or
                too few samples of a class.
        """
        F = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor)
                            else features).detach().to('cpu', torch.float64)
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor)
                            else labels).detach().cpu().reshape(-1)
        name = type(self).__name__
        if F.ndim != 2:
            raise ConfigError(f'proxy {name} needs features of shape [N, C], got '
                             f'{tuple(F.shape)}')
        if F.shape[0] != y.shape[0]:
            raise ConfigError(f'proxy {name}: {F.shape[0]} feature rows but {y.shape[0]} '
                             'labels')
        if F.shape[1] == 0:
            raise ConfigError(f'proxy {name} needs at least one feature dimension, got 0')
        self._check(F, 'the features')
        classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ConfigError(
                f'proxy {name} needs samples of at least 2 classes, got {len(classes)} '
                f'class(es) in {F.shape[0]} samples; draw more batches '
                '(num_batches x batch_size) or check the labels')
        if int(counts.min()) < self.min_per_class:
            c = int(classes[int(counts.argmin())])
            raise ConfigError(
                f'proxy {name} needs at least {self.min_per_class} samples of every class '
                f'to estimate its variance, but class {c} has {int(counts.min())}; draw '
                'more batches (num_batches x batch_size)')
        value = float(self._estimate(F, inverse, counts))
        if not math.isfinite(value):
            self._fail('nan' if math.isnan(value) else 'inf', 'the score is not finite')
        return value

    def _estimate(self, F: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> float:
        """``F`` [N, D] float64; ``y`` [N] in 0..K-1 (K >= 2); ``counts`` [K]."""
        raise NotImplementedError

    @staticmethod
    def _class_means(F, y, counts) -> torch.Tensor:
        sums = torch.zeros(len(counts), F.shape[1], dtype=F.dtype).index_add_(0, y, F)
        return sums / counts[:, None].to(F.dtype)


@PROXIES.register_module()
class LogME(_FeatureProxy):
    """LogME (You et al., ICML 2021): log maximum evidence of a linear model.

    For every class ``k``, the one-vs-rest target ``y = 1[label == k]`` is
    modelled as ``y = F w + noise`` with prior ``w ~ N(0, I / alpha)`` and noise
    ``N(0, 1 / beta)`` on the raw (uncentred, no bias) features ``F`` [n, D].
    With the thin SVD ``F = U S V^T`` (``sigma_i = s_i^2``, ``z = U^T y``) the
    log evidence is::

        L = n/2 log beta - n/2 log 2pi - beta/2 |F m - y|^2 - alpha/2 |m|^2
            - 1/2 sum_i log(1 + beta sigma_i / alpha)

    (``m`` the posterior mean; the ``D - rank`` null directions cancel). Its
    maximum over ``alpha`` is invariant to the scale of ``F`` (``alpha`` absorbs
    it), so ``F`` is first divided by ``s_max``; the maximum over ``alpha, beta``
    is then found by MacKay's fixed point from ``alpha = beta = 1`` (as in the
    paper), vectorised over the classes:
    ``gamma = sum beta sigma_i / (alpha + beta sigma_i)``, ``alpha = gamma / |m|^2``,
    ``beta = (n - gamma) / |F m - y|^2``, until both change by less than ``tol``
    (relative) or after ``max_iter`` steps; the score is ``mean_k L_k / n``.
    ``n - gamma`` is summed as ``n - rank + sum alpha / (alpha + beta sigma_i)``
    (no cancellation when ``D >= n``). Singular values below
    ``max(n, D) * eps * s_max`` count as zero. When the features fit the target
    exactly (``D >= n``, or features that encode the labels) the maximum lies at
    ``beta -> inf``: ``beta`` is capped at ``max_precision * n / |y|^2`` (noise
    std >= 1e-6 x the target's RMS), so the score stays finite (with ``D >= n``
    the evidence has a finite limit there anyway). When the iteration drives
    ``alpha -> inf`` (features no better than none; all-zero features) the limit
    ``L = -n/2 (log(2 pi |y|^2 / n) + 1)`` at ``w = 0`` is used; the result is
    never below it.

    Args:
        max_iter: most fixed-point steps per class (default 1000).
        tol: relative convergence tolerance of ``alpha`` and ``beta``.
        max_precision: cap of ``beta`` relative to ``n / |y|^2`` (default 1e12).
        **kwargs: see :class:`~dery.proxies.base.BaseProxy` (``mode`` defaults to
            ``'eval'``; runs without gradients).
    """

    def __init__(self, max_iter: int = 1000, tol: float = 1e-8, max_precision: float = 1e12,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.max_precision = float(max_precision)

    def _estimate(self, F, y, counts) -> float:
        n, D = F.shape
        U, s, _ = torch.linalg.svd(F, full_matrices=False)
        keep = s > max(n, D) * _EPS * float(s.max()) if float(s.max()) > 0 else s < 0
        U, sigma = U[:, keep].numpy(), (s[keep] ** 2).numpy()
        sigma = sigma / sigma.max() if len(sigma) else sigma  # F / s_max: same maximum
        Y = np.zeros((n, len(counts)))
        Y[np.arange(n), y.numpy()] = 1.0                 # one-vs-rest targets, one per column
        Z = U.T @ Y                                      # [r, K]
        outside = ((Y - U @ Z) ** 2).sum(0)              # |y|^2 off the feature span
        evidence = self.evidence(sigma, Z.T ** 2, outside, counts.numpy().astype(float), n)
        return float(evidence.mean()) / n

    def evidence(self, sigma: np.ndarray, z2: np.ndarray, outside: np.ndarray,
                 yy: np.ndarray, n: int) -> np.ndarray:
        """Maximum log evidence of ``K`` targets at once, from the nonzero
        ``sigma = s^2`` [r], ``z2 = (U^T y)^2`` [K, r], ``outside = |y - U U^T y|^2``
        [K] and ``yy = |y|^2`` [K]."""
        K, r = z2.shape
        # the evidence at alpha = inf (w = 0, beta = n / |y|^2): a lower bound of the maximum
        at_inf = -0.5 * n * (np.log(2 * math.pi * yy / n) + 1)
        alpha, beta = np.ones(K), np.ones(K)
        beta_max = self.max_precision * n / yy
        top = float(sigma.max()) if r else 0.0
        to_inf = (z2.sum(1) <= _EPS * yy) if r else np.ones(K, bool)
        todo = ~to_inf
        for _ in range(self.max_iter):
            idx = np.flatnonzero(todo)
            if not len(idx):
                break
            a, b = alpha[idx, None], beta[idx, None]
            gamma, rest, mm, res = self._stats(sigma, z2[idx], outside[idx], a, b, n - r)
            gone = (mm <= 0) | (beta[idx] * top <= _EPS * alpha[idx])  # alpha -> inf: w = 0
            to_inf[idx[gone]] = True
            todo[idx[gone]] = False
            live = ~gone
            idx, gamma, rest, mm, res = idx[live], gamma[live], rest[live], mm[live], res[live]
            new_alpha = gamma / mm
            new_beta = np.minimum(rest / np.maximum(res, 1e-300), beta_max[idx])
            done = ((np.abs(new_alpha - alpha[idx]) <= self.tol * new_alpha)
                    & (np.abs(new_beta - beta[idx]) <= self.tol * new_beta))
            alpha[idx], beta[idx] = new_alpha, new_beta
            todo[idx[done]] = False
        _, _, mm, res = self._stats(sigma, z2, outside, alpha[:, None], beta[:, None], n - r)
        with np.errstate(divide='ignore', invalid='ignore'):
            value = (0.5 * n * (np.log(beta) - math.log(2 * math.pi)) - 0.5 * beta * res
                     - 0.5 * alpha * mm
                     - 0.5 * np.log1p(beta[:, None] * sigma / alpha[:, None]).sum(1))
        value = np.where(to_inf | ~np.isfinite(value), at_inf, np.maximum(value, at_inf))
        return value

    @staticmethod
    def _stats(sigma, z2, outside, alpha, beta, null):
        """``gamma``, ``n - gamma``, ``|m|^2`` and ``|F m - y|^2`` per target at
        ``alpha``, ``beta`` [K, 1] (``null = n - rank``; ``n - gamma`` is summed
        directly, without cancellation)."""
        denom = alpha + beta * sigma
        gamma = (beta * sigma / denom).sum(1)
        rest = null + (alpha / denom).sum(1)
        mm = (beta ** 2 * sigma * z2 / denom ** 2).sum(1)
        res = ((alpha / denom) ** 2 * z2).sum(1) + outside
        return gamma, rest, mm, res


@PROXIES.register_module()
class HScore(_FeatureProxy):
    """H-score (Bao et al., ICIP 2019): ``tr(cov(f)^-1 cov(E[f | y]))``.

    ``cov(f)`` is the (biased, 1/n) feature covariance and
    ``cov(E[f | y]) = sum_c (n_c / n)(mu_c - mu)(mu_c - mu)^T`` the between-class
    covariance; both are computed in the basis of the centred features' SVD, so
    the cost is that of one ``[n, D]`` SVD. The inverse is, by ``shrinkage``:

    - ``'ledoit-wolf'`` (default): the regularised H-score of Ibrahim et al.
      (2022), ``tr(Sigma_a^-1 (1 - a) cov(E[f | y]))`` with the Ledoit-Wolf
      (2004) shrunk covariance ``Sigma_a = (1 - a) cov(f) + a tr(cov(f)) / D I``
      and its estimated ``a``. Default because with ``D >= n - 1`` features (the
      usual case on 5 x 32 proxy samples) the plain H-score equals ``K - 1`` for
      any features in general position.
    - a float ``a`` in [0, 1]: the same with a fixed shrinkage.
    - ``None``: the original H-score with the pseudo-inverse of ``cov(f)``,
      eigenvalues below ``max(n, D) * eps * lambda_max`` dropped.

    Constant features, and features whose Ledoit-Wolf shrinkage is 1 (covariance
    indistinguishable from isotropic noise), score 0, the lowest value.

    Args:
        shrinkage: ``'ledoit-wolf'``, a float in [0, 1] or None (see above).
        **kwargs: see :class:`~dery.proxies.base.BaseProxy` (``mode`` defaults to
            ``'eval'``; runs without gradients).
    """

    def __init__(self, shrinkage: Union[None, str, float] = 'ledoit-wolf', **kwargs):
        super().__init__(**kwargs)
        if isinstance(shrinkage, str):
            if shrinkage.lower().replace('_', '-') not in ('ledoit-wolf', 'lw'):
                raise ConfigError(f"HScore shrinkage must be 'ledoit-wolf', a float in [0, 1] "
                                 f'or None, got {shrinkage!r}')
            shrinkage = 'ledoit-wolf'
        elif shrinkage is not None:
            shrinkage = float(shrinkage)
            if not 0.0 <= shrinkage <= 1.0:
                raise ConfigError(f'HScore shrinkage must be in [0, 1], got {shrinkage}')
        self.shrinkage = shrinkage
        self._warned = False

    def _estimate(self, F, y, counts) -> float:
        n, D = F.shape
        if n <= len(counts):
            raise ConfigError(
                f'proxy HScore needs more samples than classes (got {n} samples of '
                f'{len(counts)} classes, one each); draw more batches')
        mu = F.mean(0)
        X = F - mu
        _, s, Vt = torch.linalg.svd(X, full_matrices=False)
        lam = s ** 2 / n                                   # eigenvalues of cov(f)
        A = (self._class_means(F, y, counts) - mu) @ Vt.t()  # class means in that basis
        weights = counts.to(F.dtype) / n
        between = (weights[:, None] * A ** 2).sum(0)      # diag of V^T cov(E[f|y]) V
        if float(lam.max()) <= 0:
            return 0.0  # constant features carry no information
        if self.shrinkage is None:
            if D >= n - 1 and not self._warned:
                get_logger().warning(
                    f'HScore with shrinkage=None on {D}-d features of {n} samples: the '
                    "plain H-score is then ~K-1 for any features; use shrinkage='ledoit-wolf'")
                self._warned = True
            keep = lam > max(n, D) * _EPS * float(lam.max())
            return float((between[keep] / lam[keep]).sum())
        a = self.ledoit_wolf(X, lam) if self.shrinkage == 'ledoit-wolf' else self.shrinkage
        if a >= 1.0:
            return 0.0
        shrunk = (1 - a) * lam + a * float(lam.sum()) / D
        return float((1 - a) * (between / shrunk).sum())

    @staticmethod
    def ledoit_wolf(X: torch.Tensor, lam: torch.Tensor) -> float:
        """Ledoit-Wolf shrinkage ``b^2 / d^2`` of centred ``X`` [n, D] whose
        covariance ``S = X^T X / n`` has eigenvalues ``lam``:
        ``m = tr(S) / D``, ``d^2 = |S - m I|_F^2 / D``,
        ``b^2 = min(d^2, sum_k |x_k x_k^T - S|_F^2 / (D n^2))``."""
        n, D = X.shape
        tr, sq = float(lam.sum()), float((lam ** 2).sum())   # tr(S), |S|_F^2
        d2 = (sq - tr ** 2 / D) / D
        if d2 <= 0:
            return 0.0
        fourth = float((X.pow(2).sum(1) ** 2).sum())         # sum_k |x_k|^4
        b2 = min(max((fourth - n * sq) / (D * n * n), 0.0), d2)
        return b2 / d2


@PROXIES.register_module()
class TransRate(_FeatureProxy):
    """TransRate (Huang et al., ICML 2022): ``R(Z, eps) - R_c(Z, eps | Y)``.

    ``Z`` [n, d] are the centred features (``normalize=True`` also divides them
    by their RMS sample norm ``sqrt(|Z|_F^2 / n)``, making the score invariant to
    the feature scale; off by default, as in the paper). The coding rate of
    ``m`` rows ``Z_m`` is::

        R(Z_m, eps) = 1/2 log det(I_d + Z_m^T Z_m / (m eps))

    i.e. the paper's ``1/2 log det(I + d / (m e^2) Z^T Z)`` with distortion
    ``e^2 = d * eps``; ``eps = 1e-4`` is the paper's reference value. It is
    computed as ``1/2 sum log1p(s_i^2 / (m eps))`` over the singular values.
    ``R_c = sum_k w_k R(Z_k, eps)`` over the rows ``Z_k`` of class ``k`` (still
    centred by the global mean), with ``w_k = 1 / K`` (``class_weights=
    'uniform'``, the paper's reference implementation) or ``n_k / n``
    (``'frequency'``, the MCR^2 conditional rate). Constant features score 0.
    With ``d >= n`` both rates are dominated by the ranks of ``Z`` and ``Z_k``.

    Args:
        eps: distortion per dimension (see above), default 1e-4.
        class_weights: ``'uniform'`` or ``'frequency'``.
        normalize: rescale the centred features to unit RMS norm first.
        **kwargs: see :class:`~dery.proxies.base.BaseProxy` (``mode`` defaults to
            ``'eval'``; runs without gradients).
    """

    def __init__(self, eps: float = 1e-4, class_weights: str = 'uniform',
                 normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not eps > 0:
            raise ConfigError(f'TransRate eps must be > 0, got {eps}')
        if class_weights not in ('uniform', 'frequency'):
            raise ConfigError("TransRate class_weights must be 'uniform' or 'frequency', got "
                             f'{class_weights!r}')
        self.eps = float(eps)
        self.class_weights = class_weights
        self.normalize = bool(normalize)

    def rate(self, Z: torch.Tensor) -> float:
        s = torch.linalg.svdvals(Z)
        return 0.5 * float(torch.log1p(s ** 2 / (Z.shape[0] * self.eps)).sum())

    def _estimate(self, F, y, counts) -> float:
        n = F.shape[0]
        Z = F - F.mean(0)
        if self.normalize:
            rms = math.sqrt(float((Z ** 2).sum()) / n)
            if rms > 0:
                Z = Z / rms
        conditional = 0.0
        for k in range(len(counts)):
            w = 1.0 / len(counts) if self.class_weights == 'uniform' else float(counts[k]) / n
            conditional += w * self.rate(Z[y == k])
        return self.rate(Z) - conditional


@PROXIES.register_module()
class GBC(_FeatureProxy):
    """Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022).

    Each class ``k`` is modelled as a Gaussian with diagonal covariance: mean
    ``mu_k`` and (maximum-likelihood, 1/n_k) per-dimension variance ``v_k``, on
    the features reduced by PCA to ``pca_dim`` components (the paper reduces to
    64; ``None`` keeps the raw features). With ``v = (v_i + v_j) / 2``::

        D_B(i, j) = 1/8 sum (mu_i - mu_j)^2 / v + 1/2 sum log(v / sqrt(v_i v_j))
        GBC = - sum_i sum_{j != i} exp(-D_B(i, j))

    (every unordered pair twice, the paper's double sum); in [-K(K-1), 0],
    higher = classes better separated. Variances are floored at ``var_floor``
    times the mean per-dimension variance of all features, so that a dimension
    constant within a class stays finite; constant features score ``-K(K-1)``.
    Every class needs at least 2 samples.

    Args:
        pca_dim: PCA components kept (default 64, capped at ``min(n, D)``), or None.
        var_floor: relative variance floor (default 1e-4).
        **kwargs: see :class:`~dery.proxies.base.BaseProxy` (``mode`` defaults to
            ``'eval'``; runs without gradients).
    """

    min_per_class = 2

    def __init__(self, pca_dim: Optional[int] = 64, var_floor: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        if pca_dim is not None and int(pca_dim) < 1:
            raise ConfigError(f'GBC pca_dim must be >= 1 or None, got {pca_dim}')
        self.pca_dim = None if pca_dim is None else int(pca_dim)
        self.var_floor = float(var_floor)

    def _estimate(self, F, y, counts) -> float:
        n, D = F.shape
        if self.pca_dim is not None and self.pca_dim < D:
            X = F - F.mean(0)
            _, _, Vt = torch.linalg.svd(X, full_matrices=False)
            F = X @ Vt[:min(self.pca_dim, Vt.shape[0])].t()
        means = self._class_means(F, y, counts)
        var = self._class_means((F - means[y]) ** 2, y, counts)  # 1/n_k, centred
        scale = float(F.var(0, unbiased=False).mean())
        var = var.clamp_min(self.var_floor * scale if scale > 0 else 1.0)
        log_var = var.log()
        total = 0.0
        for i in range(len(counts) - 1):
            v = (var[i] + var[i + 1:]) / 2
            d_b = ((means[i] - means[i + 1:]) ** 2 / v).sum(1) / 8 + 0.5 * (
                v.log() - 0.5 * (log_var[i] + log_var[i + 1:])).sum(1)
            total += float(torch.exp(-d_b).sum())
        return -2.0 * total + 0.0  # + 0.0: no -0.0
