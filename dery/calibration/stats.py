"""Rank agreement between proxy scores and fine-tuned accuracies: Kendall's tau-b, Spearman's rho and
seeded bootstrap intervals (numpy only, ties handled; a constant input gives NaN, never a made-up 0)."""
import math

import numpy as np

__all__ = ['kendall_tau', 'spearman_rho', 'rankdata', 'bootstrap_interval', 'rank_agreement', 'METRICS']


def _pair(x, y):
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f'rank correlation of {x.size} scores and {y.size} accuracies: the sizes differ')
    return x, y


def kendall_tau(x, y):
    """Kendall's tau-b: ``(C - D) / sqrt((n0 - n1)(n0 - n2))``, ties in either variable counted out.

    NaN with fewer than 2 values or when either variable is constant.
    """
    x, y = _pair(x, y)
    if x.size < 2:
        return float('nan')
    i, j = np.triu_indices(x.size, 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    tx, ty = np.count_nonzero(dx), np.count_nonzero(dy)   # pairs not tied in x, in y
    if tx == 0 or ty == 0:
        return float('nan')
    return float(np.sum(dx * dy) / math.sqrt(tx * ty))


def rankdata(x):
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind='mergesort')
    ranks = np.empty(x.size)
    sx = x[order]
    start = 0
    for k in range(1, x.size + 1):
        if k == x.size or sx[k] != sx[start]:
            ranks[order[start:k]] = (start + k + 1) / 2.0
            start = k
    return ranks


def spearman_rho(x, y):
    """Spearman's rho: the Pearson correlation of the (tie-averaged) ranks; NaN for a constant variable."""
    x, y = _pair(x, y)
    if x.size < 2:
        return float('nan')
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / den) if den > 0 else float('nan')


METRICS = dict(tau=kendall_tau, rho=spearman_rho)


def bootstrap_interval(x, y, fn, num=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of ``fn(x, y)``: the (x, y) pairs resampled with replacement
    ``num`` times (seeded); resamples where ``fn`` is undefined (all one value) are left out.
    ``(low, high)``, NaN when fewer than half the resamples are defined."""
    x, y = _pair(x, y)
    n = x.size
    if n < 2:
        return float('nan'), float('nan')
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(num)):
        idx = rng.integers(0, n, n)
        v = fn(x[idx], y[idx])
        if not math.isnan(v):
            values.append(v)
    if len(values) < num / 2:
        return float('nan'), float('nan')
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def rank_agreement(scores, accuracies, num_bootstrap=2000, level=0.95, seed=0):
    """``dict(n, tau, tau_ci, rho, rho_ci)`` over the pairs where the score is known (not None/NaN)."""
    pairs = [(float(s), float(a)) for s, a in zip(scores, accuracies)
             if s is not None and a is not None and math.isfinite(float(s)) and math.isfinite(float(a))]
    out = dict(n=len(pairs))
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    for k, (name, fn) in enumerate(METRICS.items()):
        out[name] = fn(x, y) if len(pairs) >= 2 else float('nan')
        out[f'{name}_ci'] = list(bootstrap_interval(x, y, fn, num_bootstrap, level, seed + k))
    return out
