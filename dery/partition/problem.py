"""The partition problem: validated inputs, block-size limits, feasible cuts, random starts.

Terms used throughout (see design.md):

* A *model* is a chain of ``N`` nodes; a *block* is a contiguous slice ``[start, end]``
  (inclusive node indices) of one model. Every partitioner cuts every model into
  ``K = num_sets`` non-empty contiguous blocks that cover its nodes in order.
* Node similarity: ``similarity[(a, b)]`` is an array ``[N_a, N_b]`` whose entry
  ``[i, j]`` compares the *output* of node ``i`` of model ``a`` with the output of
  node ``j`` of model ``b`` (linear CKA in the paper).
* Block similarity (paper, Sec. 3.2: output term plus input term)::

      S(a[s:e], b[s':e']) = sim[a, b][e, e'] + sim_in(a, s, b, s')

  The input of a block that starts at node ``s > 0`` is the output of node ``s - 1``,
  so ``sim_in = sim[a, b][s - 1, s' - 1]`` when both ``s, s' > 0``. A block that
  starts at node 0 sees the raw image: two raw inputs are the same images, so their
  similarity is ``input_similarity`` (1.0); a raw input against a feature map has no
  measured similarity and counts ``input_feature_similarity`` (0.0), which keeps the
  first block of every model apart from later-stage blocks.
* ``S`` is used in the direction ``S(member, anchor)``, i.e. ``similarity[(member
  model, anchor model)]``. If only one of ``(a, b)`` / ``(b, a)`` is given, the
  transpose stands in for the other. Self pairs ``(a, a)`` are never needed (a set
  holds at most one block per model) and are only shape-checked when present.
* Objective (what :class:`~dery.partition.CoverSetPartitioner` maximises and every
  partitioner reports)::

      sum over sets t of  sum over members B of t, B != anchor_t, of  S(B, anchor_t)

  The anchor is excluded (its self-similarity is a constant that says nothing about
  the grouping). The anchor of a set is the member with the largest summed
  similarity of the other members to it, i.e. the member that maximises the set's
  term, so given the membership the anchors are optimal.
"""
import math
import numbers

import numpy as np

from dery.errors import ConfigError

__all__ = ['Problem', 'prepare', 'size_limits', 'count_partitions', 'sample_starts', 'initial_starts',
           'IMPROVE_TOL']

#: Relative slack when comparing parameter sums against a parameter limit.
_PARAM_RTOL = 1e-12
#: An objective change must exceed this to count as an improvement (all solvers).
IMPROVE_TOL = 1e-10


class Problem:
    """Validated partition problem.

    Attributes:
        names (list[str]): model names in input order.
        nodes (list[list[str]]): node names per model.
        sizes (np.ndarray): node counts ``N_m``.
        K (int): number of sets / blocks per model.
        sim (np.ndarray | None): the *extended* similarity table ``X``, ``[M, Nmax + 1, M,
            Nmax + 1]``, where index 0 stands for the raw input and index ``i + 1`` for
            the output of node ``i``: ``X[a, 0, b, 0] = input_similarity``, ``X[a, 0, b, j
            + 1] = X[a, i + 1, b, 0] = input_feature_similarity``, ``X[a, i + 1, b, j + 1]
            = similarity[(a, b)][i, j]``; the self blocks ``X[a, :, a, :]`` are zero (the
            solver relies on it). Then ``S(a[s:e], b[s':e']) = X[a, e+1, b, e'+1] + X[a,
            s, b, s']`` (the input of a block starting at ``s`` is ``X``-index ``s``).
            ``None`` without similarity.
        sim_cols (np.ndarray | None): ``[M, M, Nmax + 1, Nmax + 1]``, ``sim_cols[a, b, y,
            x] = X[a, x, b, y]`` (columns of ``X`` as contiguous rows).
        feasible (list[np.ndarray]): per model a bool ``[N+1, N+1]`` matrix,
            ``feasible[m][s, n]`` says block ``[s, n)`` (nodes ``s..n-1``) respects the
            size limit.
        max_len (list[tuple]): per model, the longest allowed block from each start and up
            to each (exclusive) end (feasibility is an interval in the block length since
            node counts and parameters are >= 0).
        limits (list): per model block-size limit (int nodes or float params);
            ``node_limits`` the int ones (None for parameter limits).
        params (list[list[float]] | None): per-node parameter counts, if given.
    """

    def __init__(self, names, nodes, K, feasible, limits, params, sim=None, sim_cols=None):
        self.names = names
        self.nodes = nodes
        self.K = K
        self.sizes = np.array([len(n) for n in nodes], dtype=np.int64)
        self.M = len(names)
        self.Nmax = int(self.sizes.max())
        self.feasible = feasible
        self.max_len = []
        for f in feasible:
            idx = np.arange(f.shape[0])
            last = f.shape[0] - 1 - np.argmax(f[:, ::-1], axis=1)   # last allowed end
            first = np.argmax(f, axis=0)                            # first allowed start
            self.max_len.append((np.where(f.any(axis=1), last - idx, 0),
                                 np.where(f.any(axis=0), idx - first, 0)))
        self.limits = limits
        self.node_limits = [int(lim) if isinstance(lim, (int, np.integer)) else None
                            for lim in limits]
        # as arrays over (model, index): node limits (None if any limit counts parameters)
        # and the padded max_len tables
        self.node_limit_array = (None if None in self.node_limits
                                 else np.array(self.node_limits, dtype=np.int64))
        n1 = self.Nmax + 1
        self.max_len_from = np.zeros((self.M, n1), dtype=np.int64)
        self.max_len_to = np.zeros((self.M, n1), dtype=np.int64)
        for m, (mf, mt) in enumerate(self.max_len):
            self.max_len_from[m, :len(mf)] = mf
            self.max_len_to[m, :len(mt)] = mt
        self.params = params
        self.sim = sim
        self.sim_cols = sim_cols

    @property
    def has_similarity(self):
        return self.sim is not None

    def block_sim(self, a, s, e, b, s2, e2):
        """``S(a[s:e], b[s2:e2])`` as a Python float (inclusive node indices)."""
        return float(self.sim[a, e + 1, b, e2 + 1]) + float(self.sim[a, s, b, s2])


def _check_nodes(nodes):
    if not isinstance(nodes, dict) or not nodes:
        raise ConfigError('nodes must be a non-empty dict: model name -> list of node names, '
                         f'got {type(nodes).__name__}')
    names, lists = [], []
    for name, ns in nodes.items():
        if not isinstance(name, str):
            raise ConfigError(f'model names must be strings (they are JSON keys), got {name!r}')
        if isinstance(ns, (str, bytes)) or not hasattr(ns, '__len__'):
            raise ConfigError(f'nodes[{name!r}] must be a list of node names, got '
                             f'{type(ns).__name__}')
        ns = [str(n) for n in ns]
        if not ns:
            raise ConfigError(f'model {name!r} has no nodes')
        if len(set(ns)) != len(ns):
            dup = sorted({n for n in ns if ns.count(n) > 1})[0]
            raise ConfigError(f'model {name!r} lists node {dup!r} more than once')
        names.append(name)
        lists.append(ns)
    return names, lists


def check_num_sets(K, names=(), lists=()):
    """``num_sets`` as an int >= 1 (and, with node lists, no more than the shortest model's nodes)."""
    if isinstance(K, bool) or not isinstance(K, numbers.Integral):
        raise ConfigError(f'num_sets must be an integer, got {K!r}')
    K = int(K)
    if K < 1:
        raise ConfigError(f'num_sets must be >= 1, got {K}')
    for name, ns in zip(names, lists):
        if K > len(ns):
            raise ConfigError(f'num_sets={K} exceeds the {len(ns)} nodes of model {name!r}: '
                             'every model must be cut into num_sets non-empty blocks')
    return K


def check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
        raise ConfigError(f'eps must be a finite number >= 0, got {eps!r}')
    if eps < 0:
        raise ConfigError(f'eps must be >= 0, got {eps}')
    return float(eps)


def _check_params(node_params, names, lists):
    if node_params is None:
        return None
    if not isinstance(node_params, dict):
        raise ConfigError('node_params must be a dict: model name -> list of per-node '
                         f'parameter counts, got {type(node_params).__name__}')
    out = []
    for name, ns in zip(names, lists):
        if name not in node_params:
            raise ConfigError(f'node_params has no entry for model {name!r}')
        p = np.asarray(node_params[name], dtype=np.float64).reshape(-1)
        if p.shape[0] != len(ns):
            raise ConfigError(f'node_params[{name!r}] has {p.shape[0]} entries, expected '
                             f'{len(ns)} (one per node)')
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ConfigError(f'node_params[{name!r}] must be finite and >= 0')
        out.append([float(v) for v in p])
    return out


def size_limits(nodes, num_sets=4, eps=0.2, size_limit='nodes', node_params=None):
    """Per-model block-size limit and feasibility matrices.

    ``size_limit='nodes'`` (default, like the original code): a block holds at most
    ``max(ceil(N/K), floor((1 + eps) * N / K))`` nodes. The paper's bound
    ``(1 + eps) * N / K`` alone would make some models uncuttable (e.g. ``N = 9, K = 4,
    eps = 0.2`` allows 2 nodes per block, 8 < 9), so the limit is never set below the
    smallest one that admits a partition, ``ceil(N/K)``.

    ``size_limit='params'`` (as the paper writes it): the parameters of a block are at
    most ``(1 + eps) * P / K`` with ``P`` the model's total; needs ``node_params``. This
    can be infeasible (one huge node, eps too small): then ``ValueError``.

    Returns:
        tuple(list, list[np.ndarray]): the limits (int nodes or float parameters) and the
        ``[N+1, N+1]`` bool matrices ``feasible[s, n]`` (block of nodes ``s..n-1`` allowed).
    """
    names, lists = _check_nodes(nodes)
    K = check_num_sets(num_sets, names, lists)
    eps = check_eps(eps)
    if size_limit not in ('nodes', 'params'):
        raise ConfigError(f"size_limit must be 'nodes' or 'params', got {size_limit!r}")
    params = _check_params(node_params, names, lists)
    if size_limit == 'params' and params is None:
        raise ConfigError("size_limit='params' needs node_params (model -> per-node parameter "
                         "counts); pass node_params=... or use size_limit='nodes'")
    limits, feasible = [], []
    for m, (name, ns) in enumerate(zip(names, lists)):
        n = len(ns)
        idx = np.arange(n + 1)
        length = idx[None, :] - idx[:, None]          # [s, n] -> n - s
        if size_limit == 'nodes':
            lim = max(-(-n // K), int(math.floor((1.0 + eps) * n / K + 1e-9)))
            feas = (length >= 1) & (length <= lim)
        else:
            p = np.concatenate([[0.0], np.cumsum(params[m])])
            total = float(p[-1])
            lim = (1.0 + eps) * total / K
            blk = p[None, :] - p[:, None]
            feas = (length >= 1) & (blk <= lim * (1 + _PARAM_RTOL) + 1e-9)
            if count_partitions(feas, K)[K, 0] == 0:
                biggest = max(params[m])
                raise ConfigError(
                    f'size limit infeasible for model {name!r}: its {n} nodes cannot be cut into '
                    f'{K} blocks of at most (1+eps)*P/K = {lim:.6g} parameters (P = {total:.6g}, '
                    f'largest node {biggest:.6g}); increase eps or use size_limit=\'nodes\'')
        limits.append(lim)
        feasible.append(feas)
    return limits, feasible


def count_partitions(feas, K):
    """``ways[k, s]``: number of ways to cut nodes ``s..N-1`` into ``k`` feasible blocks."""
    n = feas.shape[0] - 1
    ways = np.zeros((K + 1, n + 1), dtype=np.float64)
    ways[0, n] = 1.0
    f = feas.astype(np.float64)
    for k in range(1, K + 1):
        ways[k] = (f * ways[k - 1][None, :]).sum(axis=1)   # no BLAS: no thread start-up
    return ways


def sample_starts(feas, K, R, rng):
    """Draw ``R`` cut vectors uniformly over the feasible partitions into ``K`` blocks.

    Consumes ``rng.random((R, K - 1))``. Returns an int array ``[R, K]`` of block start
    indices (column 0 is 0).
    """
    ways = count_partitions(feas, K)
    u = rng.random((R, max(K - 1, 0)))
    starts = np.zeros((R, K), dtype=np.int64)
    cur = np.zeros(R, dtype=np.int64)
    for step in range(K - 1):
        left = K - step                       # blocks still to place, the current included
        # cdf[s, x]: probability that the block starting at s ends before x
        cdf = np.cumsum(feas * ways[left - 1][None, :], axis=1)
        with np.errstate(invalid='ignore', divide='ignore'):
            cdf /= cdf[:, -1:]
        nxt = (u[:, step, None] >= cdf[cur]).sum(axis=1)
        starts[:, step + 1] = nxt
        cur = nxt
    return starts


def initial_starts(nodes, num_sets=4, restarts=200, seed=0, eps=0.2, size_limit='nodes',
                   node_params=None):
    """The random initial cuts that :class:`CoverSetPartitioner` starts from.

    For every model (in ``nodes`` order) ``restarts`` partitions are drawn uniformly
    among the ones that respect the size limit, with ``numpy.random.default_rng(seed)``.

    Returns:
        np.ndarray: int ``[restarts, M, K]``, ``[r, m, k]`` = first node of block ``k`` of
        model ``m`` in restart ``r``.
    """
    _, feasible = size_limits(nodes, num_sets, eps, size_limit, node_params)
    rng = np.random.default_rng(seed)
    return np.stack([sample_starts(f, int(num_sets), int(restarts), rng) for f in feasible],
                    axis=1)


def _get_pair(similarity, a, b, shape, check_finite=True):
    """``similarity[(a, b)]`` (or the transpose of ``(b, a)``) as float64, checked."""
    if (a, b) in similarity:
        arr, key, transpose = similarity[(a, b)], (a, b), False
    elif (b, a) in similarity:
        arr, key, transpose = similarity[(b, a)], (b, a), True
    else:
        raise ConfigError(f'similarity is missing the pair ({a!r}, {b!r}) (and ({b!r}, {a!r}))')
    if hasattr(arr, 'detach'):  # torch tensor
        arr = arr.detach().cpu().numpy()
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f'similarity[{key!r}] is not a numeric array ({e})') from None
    exp = shape if not transpose else shape[::-1]
    if arr.shape != tuple(exp):
        raise ConfigError(f'similarity[{key!r}] has shape {tuple(arr.shape)}, expected '
                         f'{tuple(exp)} (nodes of {key[0]!r} x nodes of {key[1]!r})')
    if check_finite and not np.isfinite(arr).all():
        raise ConfigError(f'similarity[{key!r}] contains NaN or inf')
    return arr.T if transpose else arr


def prepare(nodes, similarity, num_sets, eps=0.2, size_limit='nodes', node_params=None,
            input_similarity=1.0, input_feature_similarity=0.0, require_similarity=True):
    """Validate the inputs and build a :class:`Problem` (internal)."""
    names, lists = _check_nodes(nodes)
    K = check_num_sets(num_sets, names, lists)
    limits, feasible = size_limits(nodes, K, eps, size_limit, node_params)
    params = _check_params(node_params, names, lists)
    sim = cols = None
    if similarity is None:
        if require_similarity:
            raise ConfigError('similarity is required: a dict (model_a, model_b) -> array '
                             '[len(nodes[model_a]), len(nodes[model_b])]')
    else:
        if not isinstance(similarity, dict):
            raise ConfigError('similarity must be a dict (model_a, model_b) -> array, got '
                             f'{type(similarity).__name__}')
        M = len(names)
        n1 = max(len(n) for n in lists) + 1
        sim = np.zeros((M, n1, M, n1), dtype=np.float64)
        cols = np.zeros((M, M, n1, n1), dtype=np.float64)
        for a, na in enumerate(names):
            for b, nb in enumerate(names):
                shape = (len(lists[a]), len(lists[b]))
                if a == b:
                    if (na, na) in similarity:  # not needed; check it anyway
                        _get_pair(similarity, na, na, shape)
                    continue
                arr = _get_pair(similarity, na, nb, shape, check_finite=False)
                sim[a, 1:shape[0] + 1, b, 1:shape[1] + 1] = arr
                cols[a, b, 1:shape[1] + 1, 1:shape[0] + 1] = arr.T
        if not np.isfinite(sim).all():        # one check; name the first bad pair
            for a, na in enumerate(names):
                for b, nb in enumerate(names):
                    if a != b:
                        _get_pair(similarity, na, nb, (len(lists[a]), len(lists[b])))
        # index 0: the raw input (padding rows/columns are never read)
        sim[:, 0] = input_feature_similarity
        sim[:, :, :, 0] = input_feature_similarity
        sim[:, 0, :, 0] = input_similarity
        cols[:, :, 0] = input_feature_similarity
        cols[:, :, :, 0] = input_feature_similarity
        cols[:, :, 0, 0] = input_similarity
        m = np.arange(M)
        sim[m, :, m, :] = 0.0         # self blocks stay zero
        cols[m, m] = 0.0
    return Problem(names, lists, K, feasible, limits, params, sim, cols)
