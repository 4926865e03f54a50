"""Functional similarity metrics between node representations.

Every metric has one interface::

    m = SIMILARITIES.build(dict(type='LinearCKA'))
    m.update(feats_a, feats_b)      # two lists of tensors, first dim = the same samples
    m.update(feats_a2, feats_b2)    # more batches accumulate
    s = m.compute()                 # tensor [len(feats_a), len(feats_b)]
    m.reset()

Each tensor is one node's features for a batch of samples, of any trailing
shape (flattened per sample: ``[B, ...] -> [B, prod(...)]``). ``feats_b`` may be
omitted: ``m.update(feats)`` then compares every node with every other node of
the same list (the zoo-wide use: the nodes of all models in one list), and
``compute`` returns the symmetric (for symmetric metrics) ``[N, N]`` matrix at
the price of one pass.

Metrics:

* :class:`LinearCKA` - exact linear CKA on all samples seen (biased HSIC, the
  paper's metric; ``unbiased=True`` for the debiased estimator of Song et al.
  2012 / Nguyen et al. 2021).
* :class:`MinibatchCKA` - streaming linear CKA: the unbiased HSIC of every node
  pair is computed per minibatch (batched Gram matrices, never a loop over
  pairs) and summed; memory is ``O(num_nodes^2)`` scalars whatever the number
  of samples (Nguyen et al. 2021).
* :class:`RBFCKA` - CKA with an RBF kernel, bandwidth = ``threshold`` x the
  median pairwise distance (Kornblith et al. 2019).
* :class:`LinearRegression` - ``R^2`` of the least squares fit of node ``i`` of
  ``feats_a`` from node ``j`` of ``feats_b`` (the original DeRy code's ``lr``;
  not symmetric).
* :class:`SVCCA` / :class:`CCA` - mean (squared) canonical correlation after
  an SVD reduction keeping ``keep`` of the variance (``CCA``: no reduction).

Exact metrics (all but ``MinibatchCKA``) keep the features they are given (the
pooled representation, ``num_samples x dim`` per node) until ``compute``; the
streaming ``MinibatchCKA`` keeps only ``num_nodes^2`` accumulators.

Constant features: a node whose features do not vary over the samples (up to
the float precision of the input, relative tolerance ``16 * eps``) carries no
information; its similarity to every node, itself included, is defined as
**0** (never NaN). ``MinibatchCKA`` (and ``unbiased=True``) additionally
returns 0 for a node whose accumulated unbiased self-HSIC is not positive (an
estimator artefact of tiny or near-constant batches).

Values are computed in ``dtype`` (``'float64'`` by default: exact metrics
match a NumPy float64 reference to ~1e-12; use ``'float32'`` on GPUs without
fast float64).
"""
import math
from abc import ABCMeta, abstractmethod

import torch

from dery.errors import ConfigError
from dery.registry import SIMILARITIES
from dery.utils import get_logger
from dery.zoo.layout import POOLINGS

_DTYPES = dict(float32=torch.float32, float64=torch.float64, double=torch.float64,
               float=torch.float32)
# Bytes of temporary Gram rows the pairwise engine may hold at once.
_BUDGET_BYTES = 128 << 20


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------
def _as_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f'similarity dtype must be float32 or float64, got {dtype}')
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"similarity dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[dtype]


def _flatten_list(feats, what):
    """Turn a list/tuple/dict of ``[B, ...]`` tensors into ``[B, D]`` tensors."""
    if isinstance(feats, dict):
        feats = list(feats.values())
    if torch.is_tensor(feats) or not isinstance(feats, (list, tuple)):
        raise TypeError(f'{what} must be a list of tensors (one per node), '
                        f'got {type(feats).__name__}')
    if len(feats) == 0:
        raise ConfigError(f'{what} is empty: give at least one node')
    out = []
    for k, f in enumerate(feats):
        if not torch.is_tensor(f):
            try:
                f = torch.as_tensor(f)
            except Exception:
                raise TypeError(f'{what}[{k}] is a {type(f).__name__}, not a tensor') from None
        if f.dim() == 0:
            raise ConfigError(f'{what}[{k}] is a scalar; features need a batch dimension')
        if f.is_complex():
            raise TypeError(f'{what}[{k}] has complex dtype {f.dtype}')
        if f.is_floating_point() and not torch.isfinite(f).all():
            raise ConfigError(f'{what}[{k}] contains NaN or inf: the model produces non-finite outputs on '
                             'the probe set; check its weights and the probe data normalisation')
        out.append(f.reshape(f.shape[0], -1))
    n = out[0].shape[0]
    bad = [k for k, f in enumerate(out) if f.shape[0] != n]
    if bad:
        raise ConfigError(f'{what}: all nodes must hold the same samples; node 0 has {n}, '
                         f'node {bad[0]} has {out[bad[0]].shape[0]}')
    return out


#: centred features whose spread is below this fraction of their magnitude (float64 rounding of
#: the centring itself) count as constant
_CONSTANT_RTOL = 64 * torch.finfo(torch.float64).eps


def _unit(x):
    """``x / ||x||_F`` computed in float64, and ``||x||_F`` (a Python float; 1.0 for zeros)."""
    xd = x.to(torch.float64)
    scale = float(torch.linalg.vector_norm(xd))
    if not math.isfinite(scale):
        raise ConfigError(f'features of norm {scale}: beyond float64; check the model\'s outputs')
    return (xd / scale if scale > 0 else xd), (scale if scale > 0 else 1.0)


def _center(x, dtype, scaled=False):
    """Centred features in ``dtype``, scaled to unit Frobenius norm, and whether they vary.

    The centring runs in float64 whatever ``dtype``, so a large offset (float32
    features ``1e6 + N(0, 1)``, float16 ``100 + N(0, 1)``) keeps its spread, and
    the features are divided by their spread before they are cast, so float32
    never overflows or underflows (features of ``1e20`` or ``1e-20``); every
    metric here is invariant to scaling a node's features. Constant means: the
    spread is at the rounding level of the centring itself, relative to the
    features' own magnitude. ``scaled``: also return the spread (MinibatchCKA
    puts it back in its float64 accumulators).
    """
    xd = x.to(torch.float64)
    xc = xd - xd.mean(0, keepdim=True)
    spread = float(torch.linalg.vector_norm(xc))
    size = float(torch.linalg.vector_norm(xd))
    if not (math.isfinite(spread) and math.isfinite(size)):
        raise ConfigError(f'features of norm {size}: beyond float64; check the model\'s outputs')
    varying = spread > 0 and spread > _CONSTANT_RTOL * size
    scale = spread if varying else 1.0
    z = (xc / scale).to(dtype)
    return (z, varying, scale) if scaled else (z, varying)


# --------------------------------------------------------------------------
# the pairwise engine: <M_i, M'_j>_F for all node pairs, batched
# --------------------------------------------------------------------------
def _explicit_products(blocks_a, blocks_b, n, dtype, device, norms=True):
    """``A[i, j] = <M_i, M'_j>_F`` for symmetric ``n x n`` matrices, all pairs at once.

    ``blocks_a[i](r0, r1, c0, c1, out)`` writes ``M_i[r0:r1, c0:c1]`` into
    ``out``. The matrices are visited in chunks of rows; per chunk only the
    diagonal block and the blocks right of it are built (symmetry: the
    blocks left of the diagonal are counted twice through those), so about
    half of each ``M`` is ever formed. The blocks of all nodes are stacked and
    multiplied at once (one ``[Na, c*w] @ [c*w, Nb]`` matmul for all pairs):
    memory is ``(Na + Nb) * chunk * n`` values, never ``n^2`` per node.
    ``blocks_b=None``: the symmetric case ``M' = M``.
    Returns ``A``, ``||M_i||_F^2`` and ``||M'_j||_F^2``.
    """
    sym = blocks_b is None
    na_, nb_ = len(blocks_a), (len(blocks_a) if sym else len(blocks_b))
    itemsize = torch.finfo(dtype).bits // 8
    per_row = itemsize * n * (na_ + (0 if sym else nb_))
    # >= 8 chunks (the triangle saving) of >= 64 rows (matmul efficiency), within the budget
    chunk = int(max(1, min(n, _BUDGET_BYTES // max(per_row, 1), max(64, -(-n // 8)))))
    A = torch.zeros(na_, nb_, dtype=dtype, device=device)
    sa = torch.zeros(na_, dtype=dtype, device=device)
    sb = sa if sym else torch.zeros(nb_, dtype=dtype, device=device)

    def build(fns, r0, r1, c0, c1):
        out = torch.empty(len(fns), r1 - r0, c1 - c0, dtype=dtype, device=device)
        for i, f in enumerate(fns):
            f(r0, r1, c0, c1, out[i])
        return out.reshape(len(fns), -1)

    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        for c0, c1, weight in ((r0, r1, 1.0), (r1, n, 2.0)):
            if c1 <= c0:
                continue
            ga = build(blocks_a, r0, r1, c0, c1)
            gb = ga if sym else build(blocks_b, r0, r1, c0, c1)
            A.addmm_(ga, gb.T, alpha=weight)
            if norms and not sym:
                sa.add_(ga.square().sum(1), alpha=weight)
                sb.add_(gb.square().sum(1), alpha=weight)
            del ga, gb
    if norms and sym:
        sa = A.diagonal().clone()
        sb = sa
    return A, sa, sb


def _gram_block(z):
    """Blocks of ``z z^T`` for :func:`_explicit_products`."""

    def block(r0, r1, c0, c1, out):
        torch.matmul(z[r0:r1], z[c0:c1].T, out=out)
    return block


def _lowrank_products(za, zb=None, norms=True):
    """``A[i, j] = ||za[i]^T zb[j]||_F^2 = <za_i za_i^T, zb_j zb_j^T>_F``.

    ``za``/``zb``: lists of ``[n, k_i]`` factors (centred features, orthonormal
    bases...). Two equivalent routes, the cheaper one is taken:

    * feature space, ``n * Ka * Kb`` flops: ``za_i^T [zb_1 .. zb_M]`` for each
      ``i`` (a loop over nodes of ``za``, one matmul against all of ``zb``);
    * Gram space, ``~n^2 / 2 * (Ka + Kb + Na * Nb)`` flops: blocks of the
      ``n x n`` Gram matrices of all nodes (upper triangle only), one
      ``[Na, c*w] @ [c*w, Nb]`` matmul per block (:func:`_explicit_products`).

    ``zb=None``: symmetric (``zb = za``), about half the work.
    Returns ``A`` and the self terms ``||za_i^T za_i||^2``, ``||zb_j^T zb_j||^2``.
    """
    sym = zb is None
    zbl = za if sym else zb
    n = za[0].shape[0]
    dtype, device = za[0].dtype, za[0].device
    ka = [z.shape[1] for z in za]
    kb = [z.shape[1] for z in zbl]
    Ka, Kb = sum(ka), sum(kb)
    cost_feat = n * Ka * Kb * (0.5 if sym else 1.0)
    cost_gram = 0.6 * n * n * (Ka + (0 if sym else Kb) + len(za) * len(zbl))
    if cost_gram < cost_feat:
        blocks_a = [_gram_block(z) for z in za]
        blocks_b = None if sym else [_gram_block(z) for z in zbl]
        return _explicit_products(blocks_a, blocks_b, n, dtype, device, norms=norms)

    A = torch.zeros(len(za), len(zbl), dtype=dtype, device=device)
    itemsize = torch.finfo(dtype).bits // 8
    zcat = torch.cat(list(zbl), 1) if Kb else torch.zeros(n, 0, dtype=dtype, device=device)
    seg = torch.repeat_interleave(torch.arange(len(zbl), device=device),
                                  torch.tensor(kb, device=device))
    offs = [0]
    for k in kb:
        offs.append(offs[-1] + k)
    for i, z in enumerate(za):
        if z.shape[1] == 0:
            continue
        c0 = offs[i] if sym else 0  # symmetric: only the blocks j >= i
        cols = max(1, _BUDGET_BYTES // (itemsize * max(z.shape[1], 1)))
        for s in range(c0, Kb, cols):
            e = min(Kb, s + cols)
            c = z.T @ zcat[:, s:e]
            A[i].index_add_(0, seg[s:e], c.square().sum(0))
    if sym:
        A = torch.triu(A) + torch.triu(A, 1).T
    if not norms:
        return A, None, None

    def self_norm(z):
        if z.shape[1] == 0:
            return torch.zeros((), dtype=dtype, device=device)
        g = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T
        return g.square().sum()

    sa = A.diagonal().clone() if sym else torch.stack([self_norm(z) for z in za])
    sb = sa if sym else torch.stack([self_norm(z) for z in zbl])
    return A, sa, sb


def _unbiased_hsic(t1, sa, sb, ra, rb, n):
    """Unbiased HSIC (Song et al. 2012) of all pairs from batched terms.

    ``t1[i, j] = tr(K~_i L~_j)`` (``~``: diagonal set to zero), ``s = 1^T K~ 1``
    and ``r = K~ 1`` per node (``[N]`` and ``[N, n]``).
    """
    return (t1 + torch.outer(sa, sb) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (ra @ rb.T)) \
        / (n * (n - 3))


def _unbiased_terms(z):
    """``diag(K)``, ``1^T K~ 1`` and ``K~ 1`` of ``K = z z^T`` for centred ``z``."""
    dg = z.square().sum(1)
    # centred features: K 1 = 0, hence K~ 1 = -diag(K) and 1^T K~ 1 = -tr(K)
    return dg, -dg.sum(), -dg


def _linear_hsic_unbiased(za, zb=None):
    """Unbiased HSIC of linear kernels for every pair (centred features)."""
    n = za[0].shape[0]
    A, na, nb = _lowrank_products(za, zb)
    da, sa, ra = (torch.stack(t) for t in zip(*[_unbiased_terms(z) for z in za]))
    if zb is None:
        db, sb, rb = da, sa, ra
    else:
        db, sb, rb = (torch.stack(t) for t in zip(*[_unbiased_terms(z) for z in zb]))
    H = _unbiased_hsic(A - da @ db.T, sa, sb, ra, rb, n)
    ha = _self_unbiased(na, da, sa, ra, n)
    hb = ha if zb is None else _self_unbiased(nb, db, sb, rb, n)
    return H, ha, hb


def _self_unbiased(norm2, d, s, r, n):
    t1 = norm2 - d.square().sum(1)
    return (t1 + s.square() / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * r.square().sum(1)) \
        / (n * (n - 3))


def _normalise(A, sa, sb, va, vb, positive=False):
    """``A / sqrt(sa sb)``; 0 where a node is constant (or ``s <= 0``)."""
    ok_a = torch.as_tensor(va, device=A.device) & (sa > 0 if positive else sa != 0)
    ok_b = torch.as_tensor(vb, device=A.device) & (sb > 0 if positive else sb != 0)
    denom = torch.outer(sa.clamp_min(0).sqrt(), sb.clamp_min(0).sqrt())  # no overflow of sa * sb
    ok = torch.outer(ok_a, ok_b) & (denom > 0)
    return torch.where(ok, A / torch.where(ok, denom, torch.ones_like(denom)),
                       torch.zeros_like(A))


# --------------------------------------------------------------------------
# interface
# --------------------------------------------------------------------------
class BaseSimilarity(metaclass=ABCMeta):
    """The interface every similarity metric implements (as mmengine's ``BaseMetric``).

    The framework side is here: :meth:`update` checks and flattens the inputs
    (lists of ``[B, ...]`` tensors, one per node; finite; one batch of samples;
    the same node layout as earlier updates) and hands them to
    :meth:`process`; :meth:`reset` clears the layout check and calls
    :meth:`reset_state`. A metric implements :meth:`reset_state`,
    :meth:`process` and :meth:`compute` (and :meth:`settings` when it has
    arguments that change its values); :class:`StoredFeatures` implements the
    first two for metrics that need all samples at once.

    Args:
        pooling (str): how the capture stage reduces a node output to one
            vector per sample before calling :meth:`update`: ``'avg'`` (mean
            over the spatial positions / all tokens, the original code's
            choice), ``'avg_patch'`` (ViT: mean over patch tokens only,
            class/register tokens left out), ``'max'``, or ``'flatten'`` (the
            whole output; large). The metric itself flattens whatever it gets.
        dtype (str): computation dtype, ``'float64'`` (default) or ``'float32'``.
    """

    #: True when the state does not grow with the number of samples.
    streaming = False
    #: True when ``compute()`` of ``update(x, x)`` is symmetric.
    symmetric = True

    def __init__(self, pooling='avg', dtype='float64'):
        if pooling not in POOLINGS:
            raise ConfigError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
        self.pooling = pooling
        self.dtype = _as_dtype(dtype)
        self.reset()

    # -- the framework side
    def reset(self):
        """Forget every update."""
        self._shape = None
        self.reset_state()

    def update(self, feats_a, feats_b=None):
        """Add one batch: ``feats_a`` (and ``feats_b``) are lists of ``[B, ...]`` tensors, one per node.

        Without ``feats_b`` every node of ``feats_a`` is compared with every
        other (the zoo-wide use).
        """
        fa = _flatten_list(feats_a, 'feats_a')
        fb = None if feats_b is None else _flatten_list(feats_b, 'feats_b')
        if fb is not None and fb[0].shape[0] != fa[0].shape[0]:
            raise ConfigError(f'feats_a has {fa[0].shape[0]} samples but feats_b has '
                             f'{fb[0].shape[0]}; both must be the same batch')
        self._check_mode(fa, fb)
        self.process(fa, fb)

    # -- to implement
    @abstractmethod
    def reset_state(self):
        """Clear the metric's own state."""

    @abstractmethod
    def process(self, feats_a, feats_b):
        """Take one checked batch: lists of ``[B, D_i]`` tensors (``feats_b`` None: symmetric)."""

    @abstractmethod
    def compute(self):
        """The ``[len(feats_a), len(feats_b)]`` similarity tensor of everything seen."""

    def settings(self):
        """Everything that changes the values (used in cache keys)."""
        return dict(type=type(self).__name__, pooling=self.pooling,
                    dtype=str(self.dtype).replace('torch.', ''))

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in self.settings().items() if k != 'type')
        return f'{type(self).__name__}({args})'

    # -- helpers
    def _check_mode(self, fa, fb):
        sym = fb is None
        shape = (len(fa), None if sym else len(fb))
        if self._shape is None:
            self._shape = shape
        elif self._shape != shape:
            raise ConfigError(f'{type(self).__name__}.update: got {shape[0]} x {shape[1]} nodes '
                             f'after {self._shape[0]} x {self._shape[1]} (None: symmetric '
                             'update(feats)); call reset() to start over')
        return sym


class StoredFeatures(BaseSimilarity):
    """Base of the exact metrics: keeps the (pooled) features, computes on all samples at once.

    Subclasses implement :meth:`compute_features`.
    """

    def reset_state(self):
        self._a, self._b = None, None

    def process(self, fa, fb):
        if self._a is None:
            self._a = [[f] for f in fa]
            self._b = None if fb is None else [[f] for f in fb]
            return
        for store, new, what in ((self._a, fa, 'feats_a'), (self._b, fb, 'feats_b')):
            if new is None:
                continue
            for k, (chunks, f) in enumerate(zip(store, new)):
                if chunks[0].shape[1] != f.shape[1]:
                    raise ConfigError(f'{what}[{k}] has {f.shape[1]} features per sample, '
                                     f'earlier batches had {chunks[0].shape[1]}')
                chunks.append(f)

    @staticmethod
    def _gather(store):
        return [c[0] if len(c) == 1 else torch.cat(c) for c in store]

    def compute(self):
        if self._a is None:
            raise RuntimeError(f'{type(self).__name__}.compute() before any update()')
        xa = self._gather(self._a)
        xb = None if self._b is None else self._gather(self._b)
        if xa[0].shape[0] < 2:
            raise ConfigError(f'{type(self).__name__} needs at least 2 samples, got {xa[0].shape[0]}: a similarity '
                              'of features over one sample is not defined')
        return self.compute_features(xa, xb)

    @abstractmethod
    def compute_features(self, xa, xb):
        """The similarity of all ``[n, D_i]`` features ``xa`` vs ``xb`` (None: ``xa`` vs itself)."""


@SIMILARITIES.register_module()
class LinearCKA(StoredFeatures):
    """Exact linear CKA over all samples seen (Kornblith et al. 2019).

    ``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with
    ``K = X X^T``, ``L = Y Y^T``. Biased HSIC (``tr(K H L H)``, the paper's
    choice) by default, ``unbiased=True`` for the debiased estimator.

    Memory: the features given (``num_samples x dim`` per node, after
    pooling) plus a centred copy in ``dtype`` (``n * sum(dims)`` values, e.g.
    2 500 samples x 400 000 pooled dims = 8 GB in float64, 4 GB in float32)
    and at most ~128 MB of Gram rows. All node pairs are computed with
    batched matrix products, in feature space (``n * D^2`` flops) or Gram
    space (``n^2 * (D + N^2)`` flops), whichever is cheaper; cost grows as
    ``n^2`` for large zoos, so prefer :class:`MinibatchCKA` for big probe sets.
    ``dtype='float32'`` halves memory and time (differences to float64 are
    ~1e-7 on typical features).
    """

    def __init__(self, unbiased=False, **kwargs):
        self.unbiased = bool(unbiased)
        super().__init__(**kwargs)

    def settings(self):
        return dict(super().settings(), unbiased=self.unbiased)

    def compute_features(self, xa, xb):
        n = xa[0].shape[0]
        if self.unbiased and n < 4:
            raise ConfigError(f'unbiased CKA needs at least 4 samples, got {n}')
        za, va = zip(*[_center(x, self.dtype) for x in xa])
        zb, vb = (None, va) if xb is None else zip(*[_center(x, self.dtype) for x in xb])
        za = list(za)
        zb = None if zb is None else list(zb)
        if self.unbiased:
            H, ha, hb = _linear_hsic_unbiased(za, zb)
            return _normalise(H, ha, hb, list(va), list(vb), positive=True)
        A, sa, sb = _lowrank_products(za, zb)
        return _normalise(A, sa, sb, list(va), list(vb))


@SIMILARITIES.register_module()
class MinibatchCKA(BaseSimilarity):
    """Streaming linear CKA (Nguyen, Raghu & Kornblith 2021).

    Each ``update`` is one minibatch: the unbiased HSIC between every pair of
    nodes is computed from the batch's Gram matrices (all pairs in batched
    matrix products) and added to ``[Na, Nb]`` accumulators; ``compute``
    returns ``sum HSIC_ab / sqrt(sum HSIC_aa * sum HSIC_bb)``. The state is
    ``O(Na * Nb)`` scalars, independent of the number of samples.

    The value depends on how samples are grouped into batches (it converges
    to the exact unbiased CKA as the number of batches grows). Batches with
    fewer than 4 samples are skipped (the estimator needs ``n >= 4``) with a
    warning.
    """

    streaming = True

    def reset_state(self):
        self._state = None
        self._warned = False

    def _init_state(self, na, nb, device, sym):
        # float64 whatever ``dtype``: O(nodes^2) numbers, and sums of HSICs of unscaled features
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self._state = dict(hsic=z(na, nb), self_a=z(na), self_b=z(na if sym else nb),
                           varying_a=z(na), varying_b=z(na if sym else nb), batches=z(1))

    def process(self, fa, fb):
        sym = fb is None
        if self._state is None:
            self._init_state(len(fa), len(fa) if sym else len(fb), fa[0].device, sym)
        n = fa[0].shape[0]
        if n < 4:
            if not self._warned:
                get_logger().warning(f'MinibatchCKA: skipping a batch of {n} samples '
                                     '(the unbiased HSIC needs at least 4)')
                self._warned = True
            return
        za, va, sa = zip(*[_center(x, self.dtype, scaled=True) for x in fa])
        if sym:
            H, ha, hb = _linear_hsic_unbiased(list(za))
            vb, sb = va, sa
        else:
            zb, vb, sb = zip(*[_center(x, self.dtype, scaled=True) for x in fb])
            H, ha, hb = _linear_hsic_unbiased(list(za), list(zb))
        st = self._state
        dev = st['hsic'].device
        # the batch was computed on unit-norm features: put each node's spread back (HSIC is
        # quadratic in each kernel), in the float64 accumulators
        wa = torch.tensor(sa, dtype=torch.float64, device=dev).square()
        wb = torch.tensor(sb, dtype=torch.float64, device=dev).square()
        st['hsic'] += H.to(dev, torch.float64) * torch.outer(wa, wb)
        st['self_a'] += ha.to(dev, torch.float64) * wa.square()
        st['self_b'] += hb.to(dev, torch.float64) * wb.square()
        st['varying_a'] += torch.tensor(va, dtype=torch.float64, device=dev)
        st['varying_b'] += torch.tensor(vb, dtype=torch.float64, device=dev)
        st['batches'] += 1

    def compute(self):
        if self._state is None:
            raise RuntimeError('MinibatchCKA.compute() before any update()')
        st = self._state
        if float(st['batches']) == 0:
            raise ConfigError('MinibatchCKA: no batch of at least 4 samples was seen (the unbiased HSIC needs '
                              '4): raise the probe batch_size')
        return _normalise(st['hsic'], st['self_a'], st['self_b'], st['varying_a'] > 0,
                          st['varying_b'] > 0, positive=True).to(self.dtype)

    # -- one model at a time: per-node Gram matrices of a batch, combined later
    def batch_grams(self, feats):
        """What one batch of some nodes contributes, without the other nodes.

        ``feats``: one batch, a list of ``[B, ...]`` tensors (the nodes of one
        model). Returns ``(grams [N, B, B], scales [N], varying [N])``: the Gram
        matrix of each node's centred unit-norm features (in ``dtype``), its
        spread and whether it varies. :meth:`update_grams` on the grams of all
        nodes of a batch (concatenated over models) equals :meth:`update` on
        their features: the unbiased HSIC of linear kernels only needs the
        Gram matrices. The grams are ``B x B`` per node, independent of the
        feature size (``pooling='flatten'`` included).
        """
        fa = _flatten_list(feats, 'feats')
        za, va, sa = zip(*[_center(x, self.dtype, scaled=True) for x in fa])
        grams = torch.stack([z @ z.T for z in za])
        return (grams, torch.tensor(sa, dtype=torch.float64),
                torch.tensor([float(v) for v in va], dtype=torch.float64))

    def update_grams(self, grams, scales, varying):
        """Add one batch given as the :meth:`batch_grams` of all its nodes (symmetric, zoo-wide)."""
        num, n = grams.shape[0], grams.shape[1]
        shape = (num, None)
        if self._shape is None:
            self._shape = shape
        elif self._shape != shape:
            raise ConfigError(f'MinibatchCKA.update_grams: got {num} nodes after {self._shape[0]}; '
                              'call reset() to start over')
        if self._state is None:
            self._init_state(num, num, grams.device, True)
        if n < 4:
            if not self._warned:
                get_logger().warning(f'MinibatchCKA: skipping a batch of {n} samples '
                                     '(the unbiased HSIC needs at least 4)')
                self._warned = True
            return
        flat = grams.reshape(num, -1)
        A = flat @ flat.T  # <K_i, K_j>_F for all pairs at once
        d = grams.diagonal(dim1=1, dim2=2)
        s, r = -d.sum(1), -d  # centred features: K~ 1 = -diag(K), 1^T K~ 1 = -tr(K)
        H = _unbiased_hsic(A - d @ d.T, s, s, r, r, n)
        h = _self_unbiased(A.diagonal().clone(), d, s, r, n)
        st = self._state
        dev = st['hsic'].device
        w = scales.to(dev, torch.float64).square()
        st['hsic'] += H.to(dev, torch.float64) * torch.outer(w, w)
        st['self_a'] += h.to(dev, torch.float64) * w.square()
        st['self_b'] += h.to(dev, torch.float64) * w.square()
        st['varying_a'] += varying.to(dev, torch.float64)
        st['varying_b'] += varying.to(dev, torch.float64)
        st['batches'] += 1

    # -- distributed / checkpoint support (sums: all-reduce with SUM)
    def init_state(self, num_a, num_b=None, device='cpu'):
        """Zero accumulators for ``num_a`` x ``num_b`` nodes (``None``: symmetric).

        Lets every process of a distributed run hold same-shaped state before
        its first batch (a rank may get no batch at all).
        """
        self._shape = (int(num_a), None if num_b is None else int(num_b))
        self._init_state(num_a, num_a if num_b is None else num_b, torch.device(device),
                         num_b is None)

    def to(self, device):
        if self._state is not None:
            self._state = {k: v.to(device) for k, v in self._state.items()}
        return self

    def accumulators(self):
        """The state tensors; summing them over processes merges the runs."""
        return self._state

    def state_dict(self):
        return dict(shape=self._shape,
                    state=None if self._state is None else
                    {k: v.detach().cpu() for k, v in self._state.items()})

    def load_state_dict(self, sd):
        self._shape = None if sd['shape'] is None else tuple(sd['shape'])
        self._state = None if sd['state'] is None else {
            k: v.to(torch.float64) for k, v in sd['state'].items()}


@SIMILARITIES.register_module()
class RBFCKA(StoredFeatures):
    """CKA with an RBF kernel ``exp(-d^2 / (2 (threshold * median d)^2))``.

    The bandwidth is ``threshold`` times the median Euclidean distance between
    the samples of that node (the median over the full ``n x n`` distance
    matrix, diagonal included, as in Kornblith et al.'s code). Builds one
    ``n x n`` kernel per node at a time (``O(n^2)`` memory), so it suits probe
    sets up to a few thousand samples.
    """

    def __init__(self, threshold=1.0, unbiased=False, **kwargs):
        if not threshold > 0:
            raise ConfigError(f'RBFCKA threshold must be > 0, got {threshold}')
        self.threshold = float(threshold)
        self.unbiased = bool(unbiased)
        super().__init__(**kwargs)

    def settings(self):
        return dict(super().settings(), threshold=self.threshold, unbiased=self.unbiased)

    def _prepare(self, x):
        xd, varying = _center(x, self.dtype)  # distances are translation invariant
        n = xd.shape[0]
        sq = xd.square().sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2 * (xd @ xd.T)).clamp_min_(0)
        d2.fill_diagonal_(0)
        flat = d2.reshape(-1)
        m = flat.numel()
        med = flat.kthvalue((m + 1) // 2).values
        if m % 2 == 0:
            med = 0.5 * (med + flat.kthvalue(m // 2 + 1).values)
        if not med > 0:
            pos = flat[flat > 0]
            med = pos.mean() if pos.numel() else torch.ones((), dtype=xd.dtype, device=xd.device)
        gamma = 1.0 / (2 * self.threshold ** 2 * med)
        k = torch.exp(-gamma * d2)
        if self.unbiased:
            k.fill_diagonal_(0)
            info = dict(x=xd, sq=sq, gamma=gamma, s=k.sum(), r=k.sum(1))
        else:
            rm = k.mean(1)
            info = dict(x=xd, sq=sq, gamma=gamma, rm=rm, tm=rm.mean())
        del d2, k
        return info, varying

    def _block(self, info):
        x, sq, gamma = info['x'], info['sq'], info['gamma']
        unbiased = self.unbiased

        def block(r0, r1, c0, c1, out):
            torch.matmul(x[r0:r1], x[c0:c1].T, out=out)
            out.mul_(-2).add_(sq[r0:r1, None]).add_(sq[None, c0:c1]).clamp_min_(0)
            out.mul_(-gamma).exp_()
            if unbiased:
                lo, hi = max(r0, c0), min(r1, c1)
                if lo < hi:
                    idx = torch.arange(lo, hi, device=out.device)
                    out[idx - r0, idx - c0] = 0
            else:
                out.sub_(info['rm'][r0:r1, None]).sub_(info['rm'][None, c0:c1]).add_(info['tm'])
        return block

    def compute_features(self, xa, xb):
        n = xa[0].shape[0]
        if n < (4 if self.unbiased else 2):
            raise ConfigError(f'RBFCKA needs at least {4 if self.unbiased else 2} samples, got {n}')
        ia, va = zip(*[self._prepare(x) for x in xa])
        ib, vb = (ia, va) if xb is None else zip(*[self._prepare(x) for x in xb])
        blocks_a = [self._block(i) for i in ia]
        blocks_b = None if xb is None else [self._block(i) for i in ib]
        A, sa, sb = _explicit_products(blocks_a, blocks_b, n, self.dtype, xa[0].device)
        if not self.unbiased:
            return _normalise(A, sa, sb, list(va), list(vb))
        s_a = torch.stack([i['s'] for i in ia])
        r_a = torch.stack([i['r'] for i in ia])
        s_b = torch.stack([i['s'] for i in ib])
        r_b = torch.stack([i['r'] for i in ib])
        H = _unbiased_hsic(A, s_a, s_b, r_a, r_b, n)
        zero = torch.zeros_like(r_a)
        ha = _self_unbiased(sa, zero, s_a, r_a, n)
        hb = _self_unbiased(sb, torch.zeros_like(r_b), s_b, r_b, n)
        return _normalise(H, ha, hb, list(va), list(vb), positive=True)


def _basis(x, dtype, center=True, keep=1.0):
    """Orthonormal basis ``[n, r]`` of the column space of (centred) ``x``.

    Numerical rank from the singular values (``s > s_max * max(n, d) * eps``);
    ``keep < 1`` keeps the leading directions that explain that fraction of
    the variance (SVCCA's reduction). A constant ``x`` gives ``r = 0``.
    """
    if center:
        xd, varying = _center(x, dtype)
    else:
        xd, _ = _unit(x)
        varying = bool(torch.linalg.vector_norm(xd) > 0)
        xd = xd.to(dtype)
    n, d = xd.shape
    if not varying or min(n, d) == 0:
        return xd.new_zeros(n, 0)
    u, s, _ = torch.linalg.svd(xd, full_matrices=False)
    tol = s[0] * max(n, d) * torch.finfo(dtype).eps
    r = int((s > tol).sum())
    if keep < 1.0 and r > 0:
        var = s[:r].square()
        frac = torch.cumsum(var, 0) / var.sum()
        r = min(r, int((frac < keep - 1e-12).sum()) + 1)
    return u[:, :r]


@SIMILARITIES.register_module()
class LinearRegression(StoredFeatures):
    """``R^2`` of the least squares fit of ``feats_a[i]`` from ``feats_b[j]``.

    ``m[i, j] = ||Q_j^T Y_i||_F^2 / ||Y_i||_F^2`` with ``Q_j`` an orthonormal
    basis of ``feats_b[j]``: the fraction of the variance of node ``i`` that
    a linear map of node ``j`` explains (the original DeRy code's ``lr``,
    ``lr(x1, x2)`` = fit ``x1`` from ``x2``). Not symmetric.
    ``center=True`` fits with an intercept (the usual ``R^2``);
    ``center=False`` reproduces the original code (no intercept, uncentred).
    Note: with ``dim_j >= num_samples - 1`` the fit is exact and ``R^2 = 1``;
    use a probe set much larger than the pooled dims.
    """

    symmetric = False

    def __init__(self, center=True, **kwargs):
        self.center = bool(center)
        super().__init__(**kwargs)

    def settings(self):
        return dict(super().settings(), center=self.center)

    def compute_features(self, xa, xb):
        xb = xa if xb is None else xb
        if self.center:
            ya, va = zip(*[_center(x, self.dtype) for x in xa])
        else:
            ya = [_unit(x)[0].to(self.dtype) for x in xa]  # R^2 does not change with the scale
            va = [bool(torch.linalg.vector_norm(y) > 0) for y in ya]
        qb = [_basis(x, self.dtype, center=self.center) for x in xb]
        A, _, _ = _lowrank_products(list(ya), qb, norms=False)
        denom = torch.stack([y.square().sum() for y in ya])
        ok = torch.tensor(va, device=A.device)[:, None] & (denom[:, None] > 0)
        return torch.where(ok, A / torch.where(denom > 0, denom, 1.0)[:, None],
                           torch.zeros_like(A))


@SIMILARITIES.register_module()
class SVCCA(StoredFeatures):
    """SVCCA (Raghu et al. 2017): SVD reduction, then CCA.

    Each node's centred features are reduced to the leading singular
    directions that explain ``keep`` of the variance; the similarity is the
    mean of the canonical correlations between the two reduced
    representations: ``mean='squared'`` (default) the mean squared canonical
    correlation ``||Q_a^T Q_b||_F^2 / min(r_a, r_b)`` (Yanai's ``R^2_CCA``,
    batched over all pairs), ``mean='linear'`` the classic mean correlation
    (singular values of ``Q_a^T Q_b``, batched per row node).
    With ``r >= num_samples - 1`` CCA is degenerate (all correlations 1).
    """

    def __init__(self, keep=0.99, mean='squared', **kwargs):
        if not 0 < keep <= 1:
            raise ConfigError(f'SVCCA keep must be in (0, 1], got {keep}')
        if mean not in ('squared', 'linear'):
            raise ConfigError(f"SVCCA mean must be 'squared' or 'linear', got {mean!r}")
        self.keep = float(keep)
        self.mean = mean
        super().__init__(**kwargs)

    def settings(self):
        return dict(super().settings(), keep=self.keep, mean=self.mean)

    def compute_features(self, xa, xb):
        qa = [_basis(x, self.dtype, keep=self.keep) for x in xa]
        qb = None if xb is None else [_basis(x, self.dtype, keep=self.keep) for x in xb]
        qbl = qa if qb is None else qb
        ra = torch.tensor([q.shape[1] for q in qa], dtype=self.dtype, device=qa[0].device)
        rb = torch.tensor([q.shape[1] for q in qbl], dtype=self.dtype, device=qa[0].device)
        rmin = torch.minimum(ra[:, None], rb[None, :])
        if self.mean == 'squared':
            A, _, _ = _lowrank_products(qa, qb, norms=False)
        else:
            kmax = int(rb.max().item()) if len(qbl) else 0
            n = qa[0].shape[0]
            pad = qa[0].new_zeros(len(qbl), n, kmax)
            for j, q in enumerate(qbl):
                pad[j, :, :q.shape[1]] = q
            A = qa[0].new_zeros(len(qa), len(qbl))
            for i, q in enumerate(qa):
                if q.shape[1] and kmax:
                    A[i] = torch.linalg.svdvals(q.T.unsqueeze(0) @ pad).clamp(max=1).sum(1)
        return torch.where(rmin > 0, A / rmin.clamp_min(1), torch.zeros_like(A))


@SIMILARITIES.register_module()
class CCA(SVCCA):
    """Plain CCA: :class:`SVCCA` without the SVD reduction (``keep=1``)."""

    def __init__(self, mean='squared', **kwargs):
        super().__init__(keep=1.0, mean=mean, **kwargs)

    def settings(self):
        s = super().settings()
        s.pop('keep')
        return s


__all__ = ['BaseSimilarity', 'StoredFeatures', 'LinearCKA', 'MinibatchCKA', 'RBFCKA', 'LinearRegression',
           'SVCCA', 'CCA']
