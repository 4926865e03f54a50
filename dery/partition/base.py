"""Shared machinery of the partitioners: input checks, block similarity, anchors, output.

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

Output of ``partition()`` (the ``partition.json`` dict; plain Python types, keys in a
fixed order, floats rounded to 10 significant digits, so equal inputs and seed give a
byte-identical ``json.dumps``)::

    type            partitioner class name
    num_sets        K
    similarity      similarity type (str, 'unknown' unless given)
    seed            the seed
    objective       float (None for a baseline called without similarity)
    models          {model: {nodes: [names], blocks: [{start, end, set, start_index,
                     end_index, num_nodes[, params]}]}}   K blocks covering the nodes in order
    sets            [{anchor: [model, block index], members: [[model, block index], ...]
                     (one per model, model order, anchor included), score: float}]
                    ordered by set id (set 0 the shallowest for CoverSetPartitioner)
    size_limits     {model: max nodes (int) or max parameters (float) per block}
    ...             partitioner settings and diagnostics (eps, restarts, max_iters,
                    size_limit, assignment, refine, best_restart, iterations, converged,
                    refined_restarts, history: {restart_objectives: [...]},
                    input_similarity, input_feature_similarity[, seconds])
"""
import math
import numbers

import numpy as np

__all__ = ['BasePartitioner', 'evaluate_partition', 'check_partition', 'size_limits',
           'initial_starts']

#: Relative slack when comparing parameter sums against a parameter limit.
_PARAM_RTOL = 1e-12
#: An objective change must exceed this to count as an improvement (all solvers).
IMPROVE_TOL = 1e-10


def _round(x, digits=10):
    """Plain Python float rounded to ``digits`` significant digits (None stays None)."""
    if x is None:
        return None
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f'{x:.{digits}g}')


class Problem:
    """Validated partition problem (internal).

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
        raise ValueError('nodes must be a non-empty dict: model name -> list of node names, '
                         f'got {type(nodes).__name__}')
    names, lists = [], []
    for name, ns in nodes.items():
        if not isinstance(name, str):
            raise ValueError(f'model names must be strings (they are JSON keys), got {name!r}')
        if isinstance(ns, (str, bytes)) or not hasattr(ns, '__len__'):
            raise ValueError(f'nodes[{name!r}] must be a list of node names, got '
                             f'{type(ns).__name__}')
        ns = [str(n) for n in ns]
        if not ns:
            raise ValueError(f'model {name!r} has no nodes')
        if len(set(ns)) != len(ns):
            dup = sorted({n for n in ns if ns.count(n) > 1})[0]
            raise ValueError(f'model {name!r} lists node {dup!r} more than once')
        names.append(name)
        lists.append(ns)
    return names, lists


def _check_num_sets(K, names, lists):
    if isinstance(K, bool) or not isinstance(K, numbers.Integral):
        raise ValueError(f'num_sets must be an integer, got {K!r}')
    K = int(K)
    if K < 1:
        raise ValueError(f'num_sets must be >= 1, got {K}')
    for name, ns in zip(names, lists):
        if K > len(ns):
            raise ValueError(f'num_sets={K} exceeds the {len(ns)} nodes of model {name!r}: '
                             'every model must be cut into num_sets non-empty blocks')
    return K


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
        raise ValueError(f'eps must be a finite number >= 0, got {eps!r}')
    if eps < 0:
        raise ValueError(f'eps must be >= 0, got {eps}')
    return float(eps)


def _check_params(node_params, names, lists):
    if node_params is None:
        return None
    if not isinstance(node_params, dict):
        raise ValueError('node_params must be a dict: model name -> list of per-node '
                         f'parameter counts, got {type(node_params).__name__}')
    out = []
    for name, ns in zip(names, lists):
        if name not in node_params:
            raise ValueError(f'node_params has no entry for model {name!r}')
        p = np.asarray(node_params[name], dtype=np.float64).reshape(-1)
        if p.shape[0] != len(ns):
            raise ValueError(f'node_params[{name!r}] has {p.shape[0]} entries, expected '
                             f'{len(ns)} (one per node)')
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError(f'node_params[{name!r}] must be finite and >= 0')
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
    K = _check_num_sets(num_sets, names, lists)
    eps = _check_eps(eps)
    if size_limit not in ('nodes', 'params'):
        raise ValueError(f"size_limit must be 'nodes' or 'params', got {size_limit!r}")
    params = _check_params(node_params, names, lists)
    if size_limit == 'params' and params is None:
        raise ValueError("size_limit='params' needs node_params (model -> per-node parameter "
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
            if _count_partitions(feas, K)[K, 0] == 0:
                biggest = max(params[m])
                raise ValueError(
                    f'size limit infeasible for model {name!r}: its {n} nodes cannot be cut into '
                    f'{K} blocks of at most (1+eps)*P/K = {lim:.6g} parameters (P = {total:.6g}, '
                    f'largest node {biggest:.6g}); increase eps or use size_limit=\'nodes\'')
        limits.append(lim)
        feasible.append(feas)
    return limits, feasible


def _count_partitions(feas, K):
    """``ways[k, s]``: number of ways to cut nodes ``s..N-1`` into ``k`` feasible blocks."""
    n = feas.shape[0] - 1
    ways = np.zeros((K + 1, n + 1), dtype=np.float64)
    ways[0, n] = 1.0
    f = feas.astype(np.float64)
    for k in range(1, K + 1):
        ways[k] = (f * ways[k - 1][None, :]).sum(axis=1)   # no BLAS: no thread start-up
    return ways


def _sample_starts(feas, K, R, rng):
    """Draw ``R`` cut vectors uniformly over the feasible partitions into ``K`` blocks.

    Consumes ``rng.random((R, K - 1))``. Returns an int array ``[R, K]`` of block start
    indices (column 0 is 0).
    """
    ways = _count_partitions(feas, K)
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
    return np.stack([_sample_starts(f, int(num_sets), int(restarts), rng) for f in feasible],
                    axis=1)


def _get_pair(similarity, a, b, shape, check_finite=True):
    """``similarity[(a, b)]`` (or the transpose of ``(b, a)``) as float64, checked."""
    if (a, b) in similarity:
        arr, key, transpose = similarity[(a, b)], (a, b), False
    elif (b, a) in similarity:
        arr, key, transpose = similarity[(b, a)], (b, a), True
    else:
        raise ValueError(f'similarity is missing the pair ({a!r}, {b!r}) (and ({b!r}, {a!r}))')
    if hasattr(arr, 'detach'):  # torch tensor
        arr = arr.detach().cpu().numpy()
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'similarity[{key!r}] is not a numeric array ({e})') from None
    exp = shape if not transpose else shape[::-1]
    if arr.shape != tuple(exp):
        raise ValueError(f'similarity[{key!r}] has shape {tuple(arr.shape)}, expected '
                         f'{tuple(exp)} (nodes of {key[0]!r} x nodes of {key[1]!r})')
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f'similarity[{key!r}] contains NaN or inf')
    return arr.T if transpose else arr


def prepare(nodes, similarity, num_sets, eps=0.2, size_limit='nodes', node_params=None,
            input_similarity=1.0, input_feature_similarity=0.0, require_similarity=True):
    """Validate the inputs and build a :class:`Problem` (internal)."""
    names, lists = _check_nodes(nodes)
    K = _check_num_sets(num_sets, names, lists)
    limits, feasible = size_limits(nodes, K, eps, size_limit, node_params)
    params = _check_params(node_params, names, lists)
    sim = cols = None
    if similarity is None:
        if require_similarity:
            raise ValueError('similarity is required: a dict (model_a, model_b) -> array '
                             '[len(nodes[model_a]), len(nodes[model_b])]')
    else:
        if not isinstance(similarity, dict):
            raise ValueError('similarity must be a dict (model_a, model_b) -> array, got '
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


class Workspace:
    """Reusable scratch buffers (internal).

    Fresh multi-megabyte numpy arrays cost page faults on every allocation; the solver's
    hot paths write into these buffers instead (``out=``), several times faster.
    """

    def __init__(self):
        self._bufs = {}

    def get(self, name, shape, dtype=np.float64):
        size = int(np.prod(shape))
        buf = self._bufs.get((name, np.dtype(dtype)))
        if buf is None or buf.size < size:
            buf = self._bufs[(name, np.dtype(dtype))] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)


def anchor_scores(problem, ends, starts, ws=None):
    """``score[r, t, i]``: sum over members ``j != i`` of set ``t`` of ``S(B_j, B_i)``.

    ``ends``/``starts``: int arrays ``[R, K, M]`` (node index of the block of model ``j``
    that is in set ``t``). The gathers run in ``[j, i, r, t]`` order so that consecutive
    reads stay inside one ``X[j, :, i, :]`` matrix (several times faster than ``[r, t, j,
    i]``).
    """
    ws = ws or Workspace()
    M, n1 = problem.M, problem.Nmax + 1
    R, K = ends.shape[:2]
    flat = problem.sim.reshape(-1)
    m = np.arange(M)[:, None, None]
    # flat index of X[j, x_j, i, x_i]: x = end + 1 (output term), x = start (input term)
    xe = m * n1 + np.ascontiguousarray((ends + 1).transpose(2, 0, 1))     # [M, R, K]
    xs = m * n1 + np.ascontiguousarray(starts.transpose(2, 0, 1))
    score = np.zeros((M, R, K))
    # members j in chunks, so that the buffers stay around a megabyte
    G = max(1, min(M, (1 << 17) // max(1, M * R * K)))
    for j0 in range(0, M, G):
        g = min(G, M - j0)
        idx = ws.get('anchor_idx', (g, M, R, K), np.int64)
        q = ws.get('anchor_q', (g, M, R, K))
        for x in (xe, xs):
            np.add((x[j0:j0 + g] * (M * n1))[:, None], x[None], out=idx)
            flat.take(idx, out=q, mode='clip')
            score += q.sum(axis=0)            # X[j, ., j, .] is 0: no self term
    return score.transpose(1, 2, 0)


def pick_anchors(problem, ends_ts, starts_ts, current=None, tol=IMPROVE_TOL, ws=None):
    """Best anchor model of every set (vectorised over restarts).

    Args:
        ends_ts, starts_ts: int ``[R, K, M]`` block end / start of model ``j`` in set ``t``.
        current: int ``[R, K]`` current anchor models or None. A current anchor is kept
            unless another member beats it by more than ``tol`` (ties: lowest model index).

    Returns:
        tuple: anchors ``[R, K]`` (model index), set scores ``[R, K]``, changed ``[R]``.
    """
    score = anchor_scores(problem, ends_ts, starts_ts, ws)  # [R, K, M]: anchor candidate i
    best = np.argmax(score, axis=2)
    best_val = np.take_along_axis(score, best[..., None], axis=2)[..., 0]
    if current is None:
        return best, best_val, np.ones(best.shape[0], dtype=bool)
    cur_val = np.take_along_axis(score, current[..., None], axis=2)[..., 0]
    switch = best_val > cur_val + tol
    anchors = np.where(switch, best, current)
    return anchors, np.where(switch, best_val, cur_val), switch.any(axis=1)


def _set_layout(starts, blockset, sizes):
    """Ends and per-set (end, start, block) views of a state vectorised over restarts.

    ``starts``/``blockset``: ``[R, M, K]``. Returns ``ends [R, M, K]``, ``setblock
    [R, M, K]`` (block of model m in set t) and ``[R, K, M]`` ends/starts per set.
    """
    ends = np.empty_like(starts)
    ends[:, :, :-1] = starts[:, :, 1:] - 1
    ends[:, :, -1] = sizes[None, :] - 1
    setblock = np.argsort(blockset, axis=2, kind='stable')
    e_ts = np.take_along_axis(ends, setblock, axis=2).transpose(0, 2, 1)
    s_ts = np.take_along_axis(starts, setblock, axis=2).transpose(0, 2, 1)
    return ends, setblock, e_ts, s_ts


def _objective_py(problem, starts, blockset, anchors):
    """Canonical objective of one state (plain Python summation order).

    ``starts``/``blockset``: ``[M][K]`` lists, ``anchors``: list of anchor models per set.
    Returns (objective, per-set scores).
    """
    M, K = problem.M, problem.K
    ends = [[(starts[m][k + 1] - 1) if k < K - 1 else int(problem.sizes[m]) - 1
             for k in range(K)] for m in range(M)]
    setblock = [[0] * K for _ in range(M)]
    for m in range(M):
        for k in range(K):
            setblock[m][blockset[m][k]] = k
    scores = []
    for t in range(K):
        i = anchors[t]
        ki = setblock[i][t]
        tot = 0.0
        for j in range(M):
            if j == i:
                continue
            kj = setblock[j][t]
            tot += problem.block_sim(j, starts[j][kj], ends[j][kj], i, starts[i][ki],
                                     ends[i][ki])
        scores.append(tot)
    return sum(scores), scores


def _relative_depth(start, end, n):
    """Midpoint of a block as a fraction of the model's depth, in (0, 1)."""
    return (start + end + 1) / (2.0 * n)


def build_result(problem, starts, blockset, anchors, meta, renumber=True):
    """The ``partition.json`` dict of one state (plain Python types, deterministic).

    ``starts``/``blockset``: ``[M, K]`` ints; ``anchors``: ``[K]`` anchor models (or None
    without similarity: then the first model's member is reported as anchor and the
    objective is None). Sets are renumbered by the mean relative depth of their members
    (ties: previous index) when ``renumber``; set 0 is the shallowest.
    """
    M, K = problem.M, problem.K
    starts = [[int(v) for v in row] for row in np.asarray(starts)]
    blockset = [[int(v) for v in row] for row in np.asarray(blockset)]
    ends = [[(starts[m][k + 1] - 1) if k < K - 1 else int(problem.sizes[m]) - 1
             for k in range(K)] for m in range(M)]
    if anchors is None:
        anchors_l = [0] * K
        objective, scores = None, [None] * K
    else:
        anchors_l = [int(a) for a in np.asarray(anchors)]
        objective, scores = _objective_py(problem, starts, blockset, anchors_l)
    setblock = [[0] * K for _ in range(M)]
    for m in range(M):
        for k in range(K):
            setblock[m][blockset[m][k]] = k
    order = list(range(K))
    if renumber:
        depth = []
        for t in range(K):
            d = [_relative_depth(starts[m][setblock[m][t]], ends[m][setblock[m][t]],
                                 int(problem.sizes[m])) for m in range(M)]
            depth.append(sum(d) / M)
        order = sorted(range(K), key=lambda t: (depth[t], t))
    new_id = {old: new for new, old in enumerate(order)}

    models = {}
    for m, name in enumerate(problem.names):
        nodes = problem.nodes[m]
        blocks = []
        for k in range(K):
            blk = {'start': nodes[starts[m][k]], 'end': nodes[ends[m][k]],
                   'set': new_id[blockset[m][k]], 'start_index': starts[m][k],
                   'end_index': ends[m][k], 'num_nodes': ends[m][k] - starts[m][k] + 1}
            if problem.params is not None:
                blk['params'] = _round(sum(problem.params[m][starts[m][k]:ends[m][k] + 1]))
            blocks.append(blk)
        models[name] = {'nodes': list(nodes), 'blocks': blocks}
    sets = []
    for t in order:
        a = anchors_l[t]
        sets.append({
            'anchor': [problem.names[a], setblock[a][t]],
            'members': [[problem.names[m], setblock[m][t]] for m in range(M)],
            'score': _round(scores[t]),
        })
    limits = {name: (int(lim) if isinstance(lim, (int, np.integer)) else _round(lim))
              for name, lim in zip(problem.names, problem.limits)}
    result = {
        'type': meta.pop('type'),
        'num_sets': K,
        'similarity': meta.pop('similarity', 'unknown'),
        'seed': meta.pop('seed', None),
        'objective': _round(objective),
        'models': models,
        'sets': sets,
        'size_limits': limits,
    }
    result.update(meta)
    return result


def check_partition(result, nodes=None, size_limits=None):
    """Check the structure of a ``partition.json`` dict; raise ``ValueError`` if broken.

    Checks: every model is cut into ``num_sets`` non-empty contiguous blocks that cover
    its nodes in order; ``start``/``end`` name the right nodes; every set holds exactly
    one block of every model (and the block's ``set`` agrees with the set's members);
    the anchor is a member; block sizes respect ``size_limits`` (dict model -> max nodes,
    defaults to ``result['size_limits']`` when those are node counts) unless the
    partitioner reports none.
    """
    K = result['num_sets']
    models = result['models']
    if nodes is not None and list(nodes) != list(models):
        raise ValueError(f'models {list(models)} differ from nodes {list(nodes)}')
    for name, entry in models.items():
        ns = entry['nodes']
        if nodes is not None and list(map(str, nodes[name])) != ns:
            raise ValueError(f'model {name!r}: node list differs from the input')
        blocks = entry['blocks']
        if len(blocks) != K:
            raise ValueError(f'model {name!r} has {len(blocks)} blocks, expected {K}')
        pos = 0
        for k, blk in enumerate(blocks):
            s, e = ns.index(blk['start']), ns.index(blk['end'])
            if s != pos or e < s:
                raise ValueError(f'model {name!r} block {k} [{blk["start"]}, {blk["end"]}] '
                                 'is empty or not contiguous with the previous block')
            if size_limits is not None and e - s + 1 > size_limits[name]:
                raise ValueError(f'model {name!r} block {k} has {e - s + 1} nodes, limit '
                                 f'{size_limits[name]}')
            pos = e + 1
        if pos != len(ns):
            raise ValueError(f'model {name!r}: blocks cover {pos} of {len(ns)} nodes')
        sets_of = sorted(b['set'] for b in blocks)
        if sets_of != list(range(K)):
            raise ValueError(f'model {name!r} blocks are in sets {sets_of}; each set must hold '
                             'exactly one block of each model')
    if len(result['sets']) != K:
        raise ValueError(f'{len(result["sets"])} sets, expected {K}')
    for t, st in enumerate(result['sets']):
        members = [tuple(m) for m in st['members']]
        if sorted(m for m, _ in members) != sorted(models):
            raise ValueError(f'set {t} does not hold exactly one block of every model')
        for m, k in members:
            if models[m]['blocks'][k]['set'] != t:
                raise ValueError(f'set {t} lists block {k} of {m!r}, whose set is '
                                 f'{models[m]["blocks"][k]["set"]}')
        if tuple(st['anchor']) not in members:
            raise ValueError(f'set {t}: anchor {st["anchor"]} is not a member')


def evaluate_partition(result, similarity, input_similarity=1.0,
                       input_feature_similarity=0.0, repick_anchors=False):
    """Objective of a ``partition.json`` dict under ``similarity`` (see module doc).

    With ``repick_anchors`` every set's anchor is replaced by the best member first
    (useful to score a partition made without similarity, e.g. the baselines).
    """
    nodes = {name: entry['nodes'] for name, entry in result['models'].items()}
    K = result['num_sets']
    problem = prepare(nodes, similarity, K, eps=0.0, size_limit='nodes',
                      input_similarity=input_similarity,
                      input_feature_similarity=input_feature_similarity)
    index = {name: m for m, name in enumerate(problem.names)}
    starts = [[b['start_index'] if 'start_index' in b else entry['nodes'].index(b['start'])
               for b in entry['blocks']] for entry in result['models'].values()]
    blockset = [[b['set'] for b in entry['blocks']] for entry in result['models'].values()]
    if repick_anchors:
        st = np.asarray(starts)[None]
        bs = np.asarray(blockset)[None]
        _, _, e_ts, s_ts = _set_layout(st, bs, problem.sizes)
        anchors, _, _ = pick_anchors(problem, e_ts, s_ts)
        anchors = [int(a) for a in anchors[0]]
    else:
        anchors = [index[s['anchor'][0]] for s in result['sets']]
    return _objective_py(problem, starts, blockset, anchors)[0]


class BasePartitioner:
    """Base class: ``partition(nodes, similarity, ...)`` -> ``partition.json`` dict.

    Args:
        num_sets (int): ``K``, blocks per model and number of equivalence sets.
        seed (int): random seed (recorded in the output).
        similarity_type (str): name of the similarity metric, stored under
            ``'similarity'`` in the output (``partition()`` may override it).
        input_similarity (float): similarity of two models' raw inputs (same images): 1.0.
        input_feature_similarity (float): similarity of a raw input to a feature map: 0.0.
    """

    requires_similarity = True

    def __init__(self, num_sets=4, seed=0, similarity_type='unknown', input_similarity=1.0,
                 input_feature_similarity=0.0):
        self.num_sets = num_sets
        self.seed = seed
        self.similarity_type = similarity_type
        self.input_similarity = float(input_similarity)
        self.input_feature_similarity = float(input_feature_similarity)

    def _meta(self, similarity_type, **extra):
        meta = {'type': type(self).__name__,
                'similarity': similarity_type if similarity_type is not None
                else self.similarity_type,
                'seed': self.seed}
        meta.update(extra)
        meta['input_similarity'] = self.input_similarity
        meta['input_feature_similarity'] = self.input_feature_similarity
        return meta

    def partition(self, nodes, similarity=None, node_params=None, similarity_type=None):
        raise NotImplementedError
