"""Vectorised kernels of the partitioners: anchors, set layouts and the canonical objective.

Shared by :class:`~dery.partition.CoverSetPartitioner`, the baselines and
:func:`~dery.partition.evaluate_partition`; every function works on whole
batches of restarts (``[R, ...]`` integer arrays) over a
:class:`~dery.partition.problem.Problem`.
"""
import numpy as np

from .problem import IMPROVE_TOL

__all__ = ['Workspace', 'anchor_scores', 'pick_anchors', 'set_layout', 'objective_of']


class Workspace:
    """Reusable scratch buffers.

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


def set_layout(starts, blockset, sizes):
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


def objective_of(problem, starts, blockset, anchors):
    """Canonical objective of one state (plain Python summation order, so it is reproducible).

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
