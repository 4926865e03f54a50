"""The cover-set partitioner of DeRy (paper Sec. 3.2), vectorised over restarts."""
import itertools
import numbers
import time

import numpy as np

from dery.errors import ConfigError
from dery.registry import PARTITIONERS
from dery.utils import get_logger
from .base import BasePartitioner
from .kernels import Workspace, pick_anchors, set_layout
from .problem import IMPROVE_TOL, check_eps, prepare, sample_starts
from .record import Partition, round_significant

__all__ = ['CoverSetPartitioner']


class _State:
    """The solver state of all restarts (internal)."""

    def __init__(self, starts, blockset, problem):
        self.starts = starts
        self.blockset = blockset
        R, M, K = starts.shape
        self.ends, self.setblock, _, _ = set_layout(starts, blockset, problem.sizes)
        self.anchors = np.zeros((R, K), dtype=np.int64)
        self.scores = np.zeros((R, K))
        self.dirty = np.ones((R, M), dtype=bool)

    def layout(self, problem):
        self.ends, self.setblock, e_ts, s_ts = set_layout(self.starts, self.blockset,
                                                           problem.sizes)
        return e_ts, s_ts

    def take(self, idx):
        return (self.starts[idx], self.ends[idx], self.blockset[idx], self.setblock[idx],
                self.anchors[idx], self.dirty[idx])

    def put(self, idx, starts, ends, blockset, setblock, anchors, dirty, scores):
        self.starts[idx], self.ends[idx], self.blockset[idx] = starts, ends, blockset
        self.setblock[idx], self.anchors[idx], self.dirty[idx] = setblock, anchors, dirty
        self.scores[idx] = scores


def _mask_layers(K):
    """Transitions of the subset DP, layer by layer (number of sets used so far).

    Returns a list of ``(masks, ts, new_masks, pred)``: pair ``p`` adds set ``ts[p]`` to
    ``masks[p]``; ``pred[q]`` lists the pairs that lead to ``new_masks[q]``.
    """
    layers = []
    for size in range(K):
        masks, ts = [], []
        for mask in range(1 << K):
            if bin(mask).count('1') == size:
                for t in range(K):
                    if not mask >> t & 1:
                        masks.append(mask)
                        ts.append(t)
        new_masks = sorted({m | 1 << t for m, t in zip(masks, ts)})
        pos = {nm: [] for nm in new_masks}
        for p, (m, t) in enumerate(zip(masks, ts)):
            pos[m | 1 << t].append(p)
        pred = np.array([pos[nm] for nm in new_masks], dtype=np.int64)
        layers.append((np.array(masks), np.array(ts), np.array(new_masks), pred))
    return layers

#: The exact refinement enumerates subsets of sets (2^K states per node): only for small K.
_MAX_REFINE_K = 8
#: Brute-force the per-model block->set assignment over all K! permutations up to this K;
#: above it, scipy's linear_sum_assignment is called per (restart, model).
_MAX_BRUTE_FORCE_K = 6
_BIG = 1e18


@PARTITIONERS.register_module()
class CoverSetPartitioner(BasePartitioner):
    """Cut every model into ``K`` blocks and group the blocks into ``K`` equivalence sets.

    Maximises (see :mod:`dery.partition.base` for ``S`` and its input term)::

        sum over sets t, over members B of t other than its anchor A_t:  S(B, A_t)

    subject to: every model is cut into ``K`` non-empty contiguous blocks within the size
    limit, and **each set holds exactly one block of each model**.

    Why that set rule: a set is the pool of interchangeable candidates for one position
    of the reassembled network. Two blocks of one model in a set would leave another set
    without a block of that model, and the reassembly (one block per set, one per stage)
    relies on every model offering a candidate in every set. The original code's
    K-means style reassignment can put two blocks of one model in one set; here the
    block->set map of every model is a permutation. Unlike the original code, blocks of
    different stage index (and of different models) are compared normally.

    ``assignment='free'`` (default, faithful to the paper's objective): the permutation is
    chosen by the optimisation, so block ``k`` of a model may join set ``k' != k`` when
    it fits better there. ``assignment='stage'`` (the original code's robust choice):
    block ``k`` of every model is in set ``k``. In both cases the sets are finally
    renumbered by the mean relative depth (block midpoint / model depth) of their
    members, so set 0 is the shallowest.

    Solver (paper): for each of ``restarts`` random starts (cuts drawn uniformly among
    the partitions within the size limit, block ``k`` in set ``k``, anchors picked),
    repeat until nothing changes (or ``max_iters`` outer iterations):

    1. inner loop (Kernighan-Lin style), model by model: with the anchors fixed, apply
       the +-1 node move of a cut point that raises the objective most, while one raises
       it (by more than 1e-10; ties: first move in the order cut 0..K-2 moving down, then
       up). All ``2 (K - 1)`` moves are scored at once from per-block tables; all
       restarts, and the models of a restart that cannot interact, are processed in the
       same array operations (the result is exactly that of the one-by-one loop);
    2. reassignment (``'free'``): each model's blocks get the best permutation of sets
       against the anchors (``K x K`` assignment, brute force over the ``K!``
       permutations up to K = 6, else ``scipy.optimize.linear_sum_assignment``); a block
       that is an anchor keeps its set;
    3. anchors re-picked: the member with the largest summed similarity of the others.

    Every step never lowers the objective. ``refine`` (an addition to the paper): the
    best ``refine`` restarts (distinct objectives) then get an exact block-coordinate
    step: for each model, with anchors and other models fixed, its cuts and its set
    assignment are re-optimised jointly by dynamic programming; if that helps, the loop
    above resumes, and so on until no model improves. It escapes the loop's typical
    local optimum (a model whose blocks belong to the sets in another order than their
    index) at the cost of a few milliseconds. ``refine=0`` is the paper's loop alone,
    which reproduces ``benchmarks/reference_partition.py`` exactly. The best restart
    (first on ties) is returned.

    Args:
        num_sets (int): ``K``. Default 4.
        eps (float): block-size slack, a block has at most ``(1 + eps) * N / K`` nodes
            (``size_limit='nodes'``, never below ``ceil(N / K)``) or ``(1 + eps) * P / K``
            parameters (``size_limit='params'``). Default 0.2.
        restarts (int): ``R`` random restarts. Default 200.
        max_iters (int): cap on outer iterations per restart. Default 100.
        seed (int): seed of ``numpy.random.default_rng`` for the initial cuts. Default 0.
        size_limit (str): ``'nodes'`` (default, like the original code) or ``'params'``
            (as in the paper; ``partition()`` then needs ``node_params``).
        assignment (str): ``'free'`` (default) or ``'stage'``, see above.
        similarity_type (str): recorded as ``'similarity'`` in the output.
        input_similarity (float): similarity of two raw inputs (1.0).
        input_feature_similarity (float): raw input vs a feature map (0.0).
        refine (int): number of best restarts given the exact refinement (0: none; only
            for K <= 8). Default 1.
        progress (bool): log one line per outer iteration. Default False.
        record_time (bool): add ``'seconds'`` to the output (which then differs from run
            to run). Default False, so the output is byte-identical for the same inputs.
    """

    def __init__(self, num_sets=4, eps=0.2, restarts=200, max_iters=100, seed=0,
                 size_limit='nodes', assignment='free', similarity_type='unknown',
                 input_similarity=1.0, input_feature_similarity=0.0, refine=1,
                 progress=False, record_time=False):
        super().__init__(num_sets=num_sets, seed=seed, similarity_type=similarity_type,
                         input_similarity=input_similarity,
                         input_feature_similarity=input_feature_similarity)
        for name, val, low in (('restarts', restarts, 1), ('max_iters', max_iters, 1),
                               ('refine', refine, 0)):
            if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < low:
                raise ConfigError(f'{name} must be an integer >= {low}, got {val!r}')
        if size_limit not in ('nodes', 'params'):
            raise ConfigError(f"size_limit must be 'nodes' or 'params', got {size_limit!r}")
        if assignment not in ('free', 'stage'):
            raise ConfigError(f"assignment must be 'free' or 'stage', got {assignment!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ConfigError(f'seed must be an integer, got {seed!r}')
        self.eps = check_eps(eps)
        self.restarts = int(restarts)
        self.max_iters = int(max_iters)
        self.refine = int(refine)
        self.size_limit = size_limit
        self.assignment = assignment
        self.progress = progress
        self.record_time = record_time

    # ------------------------------------------------------------------ public API
    def partition(self, nodes, similarity, node_params=None, similarity_type=None):
        """Partition the zoo.

        Args:
            nodes (dict[str, list[str]]): model -> node names, in forward order.
            similarity (dict[tuple[str, str], array]): ``(a, b)`` -> ``[N_a, N_b]`` node
                similarity (numpy array, nested list or CPU tensor). One order per pair
                is enough; self pairs are not needed.
            node_params (dict[str, list[float]] | None): per-node parameter counts; needed
                for ``size_limit='params'``, and adds ``'params'`` to each block.
            similarity_type (str | None): overrides the constructor's ``similarity_type``.

        Returns:
            dict: the ``partition.json`` structure (see ``design.md``), plain Python types.
        """
        t0 = time.perf_counter()
        problem = prepare(nodes, similarity, self.num_sets, self.eps, self.size_limit,
                          node_params, self.input_similarity, self.input_feature_similarity)
        R, K = self.restarts, problem.K
        rng = np.random.default_rng(self.seed)
        starts = np.stack([sample_starts(f, K, R, rng) for f in problem.feasible], axis=1)
        state = self.solve(problem, starts)
        r = state['best_restart']
        meta = self._meta(
            similarity_type, eps=float(self.eps), restarts=R, max_iters=self.max_iters,
            size_limit=self.size_limit, assignment=self.assignment, refine=self.refine,
            best_restart=r, iterations=state['iterations'], converged=state['converged'],
            refined_restarts=state['refined'],
            history={'restart_objectives': [round_significant(v) for v in state['objectives']]})
        seconds = time.perf_counter() - t0
        if self.record_time:
            meta['seconds'] = round(seconds, 4)
        result = Partition.from_state(problem, state['starts'][r], state['blockset'][r],
                                      state['anchors'][r], meta)
        get_logger().info(
            f'CoverSetPartitioner: {problem.M} models, K={K}, {R} restarts -> objective '
            f'{result.objective} (restart {r}, {state["iterations"]} iterations'
            f'{"" if state["converged"] else ", not converged"}) in {seconds:.2f}s')
        return result

    # ------------------------------------------------------------------ solver
    def solve(self, problem, starts):
        """Run the optimisation from ``starts`` ``[R, M, K]`` (all restarts at once).

        Returns a dict with final ``starts``, ``blockset`` (``[R, M, K]``: set of block k),
        ``anchors`` (``[R, K]`` anchor model per set), ``objectives`` ``[R]``,
        ``best_restart``, ``iterations``, ``converged`` and ``refined`` (restarts that the
        exact refinement improved).
        """
        starts = np.array(starts, dtype=np.int64)
        R, M, K = starts.shape
        st = _State(starts, np.broadcast_to(np.arange(K), (R, M, K)).copy(), problem)
        ws = Workspace()
        e_ts, s_ts = st.layout(problem)
        st.anchors, st.scores, _ = pick_anchors(problem, e_ts, s_ts, ws=ws)
        perms = None
        if self.assignment == 'free' and 1 < K <= _MAX_BRUTE_FORCE_K:
            perms = np.array(list(itertools.permutations(range(K))), dtype=np.int64)
        iters, converged = self._alternate(problem, st, np.arange(R), perms, ws)
        refined = []
        if self.refine and 1 < K <= _MAX_REFINE_K:
            objectives = st.scores.sum(axis=1)
            order = np.argsort(-objectives, kind='stable')
            # the best distinct local optima (many restarts end in the same one)
            _, first = np.unique(np.round(objectives[order], 9), return_index=True)
            distinct = order[np.sort(first)]
            distinct = distinct[np.argsort(-objectives[distinct], kind='stable')]
            cand = np.sort(distinct[:self.refine])
            for _ in range(self.max_iters):
                improved = self._refine(problem, st, cand, ws)
                if not improved.any():
                    break
                cand = cand[improved]
                refined.extend(int(r) for r in cand)
                n_it, conv = self._alternate(problem, st, cand, perms, ws)
                iters, converged = max(iters, n_it), converged and conv
        objectives = st.scores.sum(axis=1)
        return dict(starts=st.starts, blockset=st.blockset, anchors=st.anchors,
                    objectives=[float(v) for v in objectives],
                    best_restart=int(np.argmax(objectives)), iterations=iters,
                    converged=converged, refined=sorted(set(refined)))

    def _alternate(self, problem, st, act, perms, ws):
        """The paper's loop on restarts ``act`` until they converge (in place on ``st``)."""
        R, M, K = st.starts.shape
        logger = get_logger()
        it = 0
        # A restart in which one whole iteration changed nothing has converged (the next
        # iteration would see the same state and decide the same), so only the still
        # active restarts are carried on.
        for it in range(1, self.max_iters + 1):
            sub = st.take(act)
            starts, ends, blockset, setblock, anchors, dirty = sub
            changed = np.zeros(len(act), dtype=bool)
            if K > 1:
                changed |= self._cut_moves(problem, starts, ends, blockset, setblock, anchors,
                                           dirty, ws)
                if self.assignment == 'free':
                    moved = self._reassign(problem, starts, ends, blockset, setblock, anchors,
                                           perms, ws)                          # [R, M]
                    # who may move now: the reassigned models and the anchor models of
                    # the restarts concerned (their sets' members changed); the anchor
                    # blocks kept their sets, so the other models' terms are unchanged
                    ch = moved.any(axis=1)
                    dirty |= moved
                    dirty[ch] |= (anchors[ch][:, :, None] == np.arange(M)).any(axis=1)
                    changed |= ch
            ends, setblock, e_ts, s_ts = set_layout(starts, blockset, problem.sizes)
            anchors, scores, ch = pick_anchors(problem, e_ts, s_ts, anchors, ws=ws)
            dirty[ch] = True                  # anchors changed: every model may move
            changed |= ch
            st.put(act, starts, ends, blockset, setblock, anchors, dirty, scores)
            act = act[changed]
            if self.progress:
                logger.info(f'CoverSetPartitioner iter {it}: {len(act)}/{R} restarts still '
                            f'improving, best objective {st.scores.sum(1).max():.6f}')
            if not len(act):
                return it, True
        return it, False

    def _refine(self, problem, st, cand, ws):
        """Exact block-coordinate step on restarts ``cand``; returns improved ``[len]``.

        For each model in turn, with the anchors (as models) and all other models fixed,
        its cuts *and* its block->set assignment are re-optimised jointly and exactly by
        a dynamic programme over (cut position, sets used so far); the result is kept if
        it beats the current one by more than the tolerance. This escapes the local
        optima of the +-1 moves, e.g. a model whose blocks belong to the sets in another
        order than block index (a permutation the paper's loop rarely reaches from
        random cuts). Models are grouped as in :meth:`_cut_moves` (the non-hosts between
        two hosts do not interact). Then the anchors are re-picked.
        """
        _, M, K = st.starts.shape
        n1 = problem.Nmax + 1
        cols = problem.sim_cols.reshape(M * M * n1, n1)
        rows = problem.sim.reshape(M * n1 * M, n1)
        starts, ends, blockset, setblock, anchors, dirty = st.take(cand)
        B = len(cand)
        jm = np.arange(M)[None, :]
        layers = _mask_layers(K)
        full = (1 << K) - 1
        max_to = problem.max_len_to
        L = int(max_to.max())
        ll = np.arange(1, L + 1)[:, None]                      # block length
        cc = np.arange(n1)[None, :]                            # exclusive end c'
        c_from = np.clip(cc - ll, 0, None)                     # [L, n1] start c' - l
        host = (anchors[:, :, None] == np.arange(M)).any(axis=1)            # [B, M]
        group = 2 * (np.cumsum(host, axis=1) - host) + host
        improved = np.zeros(B, dtype=bool)
        for g in range(2 * K + 1):
            pr, pa = np.nonzero((group == g) & (problem.sizes > K))
            if not len(pr):
                continue
            P = len(pr)
            _, ae, as_ = self._anchor_blocks(starts, ends, setblock, anchors)
            # tables over X indices: block in set t ending at x - 1 (E) / starting at x (St)
            base_a = (pa * (M * n1))[:, None]
            E = cols[base_a + anchors[pr] * n1 + ae[pr] + 1]                 # [P, K, n1]
            St = cols[base_a + anchors[pr] * n1 + as_[pr]]
            hr, ht = np.nonzero(anchors[pr] == pa[:, None])
            if len(hr):
                kb = setblock[pr[hr], :, ht]                                 # [H, M]
                hrc = pr[hr][:, None]
                base = jm * (n1 * M) + pa[hr][:, None]
                E[hr, ht] = rows[ends[hrc, jm, kb] * M + (base + M)].sum(axis=1)
                St[hr, ht] = rows[starts[hrc, jm, kb] * M + base].sum(axis=1)
            cur_t = blockset[pr, pa]                                         # [P, K]
            pp = np.arange(P)[:, None]
            cur = (E[pp, cur_t, ends[pr, pa] + 1] + St[pp, cur_t, starts[pr, pa]]).sum(axis=1)
            # ok[p, l, c']: block [c' - l, c') is allowed for the model of pair p
            ok = (ll[None] <= max_to[pa][:, None, :]) & (cc - ll >= 0)[None]   # [P, L, n1]
            value = np.full((P, full + 1, n1), -np.inf)
            value[:, 0, 0] = 0.0
            back_c = np.zeros((P, full + 1, n1), dtype=np.int64)
            back_t = np.zeros((P, full + 1, n1), dtype=np.int64)
            for size, (masks, ts, new_masks, pred) in enumerate(layers):
                # block [c' - l, c') in set t after the blocks of `mask`
                inner = value[:, masks, :] + St[:, ts, :]                    # [P, T, c]
                tot = inner[:, :, c_from] + E[:, ts, None, :]                # [P, T, L, c']
                tot[~np.broadcast_to(ok[:, None], tot.shape)] = -np.inf
                if self.assignment == 'stage':     # block `size` must go to set `size`
                    tot[:, (ts != size) | (masks != (1 << size) - 1)] = -np.inf
                arg_l = tot.argmax(axis=2)                                   # [P, T, c']
                val = tot.max(axis=2)
                cand_v = val[:, pred]                                        # [P, Q, l, c']
                arg_p = cand_v.argmax(axis=2)
                value[:, new_masks] = cand_v.max(axis=2)
                p_idx = pred[np.arange(len(new_masks))[None, :, None], arg_p]  # [P, Q, c']
                back_t[:, new_masks] = ts[p_idx]
                back_c[:, new_masks] = cc - 1 - arg_l[pp[:, :, None], p_idx, cc[None]]
            na = problem.sizes[pa]
            best = value[np.arange(P), full, na]
            better = best > cur + IMPROVE_TOL
            for p in np.nonzero(better)[0]:
                r, a = pr[p], pa[p]
                mask, c = full, int(na[p])
                cuts, sets = [], []
                while mask:
                    t, c0 = int(back_t[p, mask, c]), int(back_c[p, mask, c])
                    sets.append(t)
                    cuts.append(c0)
                    mask ^= 1 << t
                    c = c0
                starts[r, a] = cuts[::-1]
                blockset[r, a] = sets[::-1]
                ends[r, a, :-1] = starts[r, a, 1:] - 1
                setblock[r, a] = np.argsort(blockset[r, a], kind='stable')
            improved[pr[better]] = True
        if improved.any():
            ends, setblock, e_ts, s_ts = set_layout(starts, blockset, problem.sizes)
            anchors, scores, _ = pick_anchors(problem, e_ts, s_ts, anchors, ws=ws)
            dirty[improved] = True
            st.put(cand, starts, ends, blockset, setblock, anchors, dirty, scores)
        return improved

    @staticmethod
    def _anchor_blocks(starts, ends, setblock, anchors):
        R, _, K = starts.shape
        rr = np.arange(R)[:, None]
        anc_k = setblock[rr, anchors, np.arange(K)[None, :]]
        return anc_k, ends[rr, anchors, anc_k], starts[rr, anchors, anc_k]

    def _cut_moves(self, problem, starts, ends, blockset, setblock, anchors, dirty, ws):
        """Inner loop: one sweep over the models, in place on ``starts``/``ends``/``dirty``.

        The paper visits the models one after the other (Gauss-Seidel). Within a restart,
        models that host no anchor do not interact: their terms only involve the anchor
        blocks. So the sweep of each restart is cut into groups, in model order: the
        non-hosts before the first host, the first host, the non-hosts up to the next
        host, ... (at most ``2K + 1`` groups), and group ``i`` of every restart is
        searched in one batch. This gives exactly the result of the one-by-one sweep.

        ``dirty[r, a]``: the terms of model ``a`` in restart ``r`` may have changed since
        its last search (which ended in a local optimum); a clean model would not move
        and is skipped. Returns moved ``[R]``.
        """
        R, M, K = starts.shape
        n1 = problem.Nmax + 1
        cols = problem.sim_cols.reshape(M * M * n1, n1)    # [(a, b, y)] -> X[a, :, b, y]
        rows = problem.sim.reshape(M * n1 * M, n1)         # [(j, x, a)] -> X[j, x, a, :]
        jm = np.arange(M)[None, :]
        sizes = problem.sizes
        node_limit = problem.node_limit_array
        anc_k, ae, as_ = self._anchor_blocks(starts, ends, setblock, anchors)
        # column of each set's anchor (output / input X index) in cols, minus a's offset
        col_e, col_s = anchors * n1 + ae + 1, anchors * n1 + as_
        host = (anchors[:, :, None] == np.arange(M)).any(axis=1)         # [R, M]
        group = 2 * (np.cumsum(host, axis=1) - host) + host              # [R, M]
        movable = sizes > K                                              # [M]
        moved_any = np.zeros(R, dtype=bool)
        move_col = np.tile(np.arange(1, K), 2)               # move -> column of bounds
        move_dir = np.repeat([-1, 1], K - 1)
        for g in range(2 * K + 1):
            pr, pa = np.nonzero((group == g) & dirty & movable)
            if not len(pr):
                continue
            P = len(pr)
            prc = pr[:, None]
            na = sizes[pa]
            t_k = blockset[pr, pa, :]                                 # [P, K] set of block k
            b_k = anchors[prc, t_k]                                   # its anchor model
            # term of block k as a function of its end node + 1 (te) / start node (ts),
            # both X indices; for a member block: S(block, anchor) = a column of X[a, :, b]
            base_a = (pa * (M * n1))[:, None]
            # (large temporaries live in reused workspace buffers: fresh multi-megabyte
            # arrays cost page faults every time)
            te = cols.take(base_a + col_e[prc, t_k], axis=0, out=ws.get('te', (P, K, n1)),
                           mode='clip')                               # [P, K, n1]
            ts = cols.take(base_a + col_s[prc, t_k], axis=0, out=ws.get('ts', (P, K, n1)),
                           mode='clip')
            hosted = b_k == pa[:, None]
            hr, hk = np.nonzero(hosted)
            if len(hr):
                # an anchor block's term is the sum over the other members j of S(B_j,
                # block): rows e_j + 1 (s_j) of X[j, :, a] (the j = a row is in the zero
                # self block)
                hrs = pr[hr]
                kb = setblock[hrs, :, t_k[hr, hk]]                    # [H, M] block of j
                hrc = hrs[:, None]
                base = jm * (n1 * M) + pa[hr][:, None]
                H = len(hr)
                # gathered in [j, h] order: consecutive rows lie in one X[j] slab
                idx = np.concatenate([ends[hrc, jm, kb] * M + (base + M),
                                      starts[hrc, jm, kb] * M + base]).T        # [M, 2H]
                agg = rows.take(idx, axis=0, out=ws.get('agg_rows', (M, 2 * H, n1)),
                                mode='clip')
                agg = agg.sum(axis=0, out=ws.get('agg', (2 * H, n1)))
                te[hr, hk] = agg[:len(hr)]
                ts[hr, hk] = agg[len(hr):]
            # val[p, k, c]: score of cut k at node c, i.e. block k ends at node c-1 (X index
            # c) and block k+1 starts at c (X index c). Gains of moving cut k from c: to
            # c+1, up[c] = val[c+1] - val[c]; to c-1, down[c] = val[c-1] - val[c]; at flat
            # index offset[p, k] + c.
            val = np.add(te[:, :-1], ts[:, 1:], out=ws.get('val', (P, K - 1, n1)))
            # (the last column of up is never read: a cut is at most N - 1 <= Nmax - 1)
            up = ws.get('up', (P, K - 1, n1))
            np.subtract(val[:, :, 1:], val[:, :, :-1], out=up[:, :, :-1])
            up = up.reshape(-1)
            offset = (np.arange(P)[:, None] * (K - 1) + np.arange(K - 1)[None, :]) * n1
            cuts0 = starts[pr, pa, 1:]
            bounds = np.empty((P, K + 1), dtype=np.int64)         # [0, cut_1.., N]
            bounds[:, 0], bounds[:, 1:K], bounds[:, K] = 0, cuts0, na
            act = np.arange(P)
            for _ in range(4 * int(na.max()) * K):
                ba = bounds[act]
                ca, prev, nxt = ba[:, 1:K], ba[:, :K - 1], ba[:, 2:]
                off = offset[act] + ca
                dl, dr = ca - prev, nxt - ca                  # sizes of blocks k and k+1
                # the shrinking block must stay non-empty, the growing one within the limit
                if node_limit is None:
                    am = pa[act][:, None]
                    ok_down = (dl > 1) & (dr < problem.max_len_to[am, nxt])
                    ok_up = (dr > 1) & (dl < problem.max_len_from[am, prev])
                else:
                    lim = node_limit[pa[act]][:, None]
                    ok_down = (dl > 1) & (dr < lim)
                    ok_up = (dr > 1) & (dl < lim)
                # moves in the order (cut 0, -1) ... (cut K-2, -1), (cut 0, +1) ...
                gain = np.concatenate([up.take(off - 1), up.take(off)], axis=1)
                gain[:, :K - 1] *= -1.0          # down[c] = val[c-1] - val[c] = -up[c-1]
                gain[~np.concatenate([ok_down, ok_up], axis=1)] = -np.inf
                best = gain.argmax(axis=1)
                imp = gain.max(axis=1) > IMPROVE_TOL
                if not imp.any():
                    break
                act, best = act[imp], best[imp]
                bounds[act, move_col[best]] += move_dir[best]
            dirty[pr, pa] = False
            moved = (bounds[:, 1:K] != cuts0).any(axis=1)
            if not moved.any():
                continue
            mr, ma = pr[moved], pa[moved]
            moved_any[mr] = True
            starts[mr, ma, 1:] = bounds[moved, 1:K]
            ends[mr, ma, :-1] = bounds[moved, 1:K] - 1
            # who sees the move: every model if it hosts an anchor (every model has a block
            # in that set), else the anchor models of its sets (their aggregates)
            is_host = hosted[moved].any(axis=1)
            if is_host.any():
                hm = mr[is_host]
                dirty[hm] = True
                dirty[hm, ma[is_host]] = False
                # the anchors that moved with the cuts
                hmc = hm[:, None]
                col_e[hm] = anchors[hm] * n1 + ends[hmc, anchors[hm], anc_k[hm]] + 1
                col_s[hm] = anchors[hm] * n1 + starts[hmc, anchors[hm], anc_k[hm]]
            dirty[mr[~is_host][:, None], b_k[moved][~is_host]] = True

        return moved_any

    def _reassign(self, problem, starts, ends, blockset, setblock, anchors, perms, ws):
        """Best block->set permutation per model against fixed anchors (in place).

        Returns ``[R, M]``: the models whose assignment changed."""
        R, M, K = starts.shape
        anc_k, ae, as_ = self._anchor_blocks(starts, ends, setblock, anchors)
        n1 = problem.Nmax + 1
        flat = problem.sim.reshape(-1)
        aa = np.arange(M)[:, None, None, None]
        # W[a, r, k, t] = S(block k of model a, anchor of set t), gathered in this order
        # for memory locality
        shape = (M, R, K, K)
        idx = ws.get('reassign_idx', shape, np.int64)
        W = ws.get('reassign_w', shape)
        tmp = ws.get('reassign_tmp', shape)
        np.add((aa * n1 + 1 + ends.transpose(1, 0, 2)[..., None]) * (M * n1),
               (anchors * n1 + ae + 1)[None, :, None, :], out=idx)
        flat.take(idx, out=W, mode='clip')
        np.add((aa * n1 + starts.transpose(1, 0, 2)[..., None]) * (M * n1),
               (anchors * n1 + as_)[None, :, None, :], out=idx)
        W += flat.take(idx, out=tmp, mode='clip')
        # a model's block that is the anchor of set t stays in t: only (anc_k, t) allowed
        # in its row and column (its term there is a constant, 0)
        rr = np.broadcast_to(np.arange(R)[:, None], (R, K))
        tt = np.broadcast_to(np.arange(K)[None, :], (R, K))
        W[anchors, rr, :, tt] = -_BIG
        W[anchors, rr, anc_k, :] = -_BIG
        W[anchors, rr, anc_k, tt] = 0.0
        bs = blockset.transpose(1, 0, 2)                                      # [M, R, K]
        cur = np.take_along_axis(W, bs[..., None], axis=3)[..., 0].sum(axis=2)
        if perms is not None:
            # scores[a, r, p] = sum_k W[a, r, k, perm_p[k]]
            scores = W[:, :, 0].take(perms[:, 0], axis=2)
            for k in range(1, K):
                scores += W[:, :, k].take(perms[:, k], axis=2)
            best = np.argmax(scores, axis=2)
            best_val = np.take_along_axis(scores, best[..., None], axis=2)[..., 0]
            imp = (best_val > cur + IMPROVE_TOL).T                           # [R, M]
            blockset[imp] = perms[best.T[imp]]
        else:
            from scipy.optimize import linear_sum_assignment
            imp = np.zeros((R, M), dtype=bool)
            for r in range(R):
                for a in range(M):
                    rows, cols = linear_sum_assignment(W[a, r], maximize=True)
                    val = W[a, r, rows, cols].sum()
                    if val > cur[a, r] + IMPROVE_TOL:
                        blockset[r, a, rows] = cols
                        imp[r, a] = True
        if imp.any():
            setblock[:] = np.argsort(blockset, axis=2, kind='stable')
        return imp
