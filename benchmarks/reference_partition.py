"""REFERENCE IMPLEMENTATION -- for benchmarking and testing only, not used by DeRy.

A straightforward plain-Python re-implementation of the paper's cover-set partition loop
(DeRy, Yang et al. NeurIPS 2022, Sec. 3.2), with the same objective, constraints and
decisions as :class:`dery.partition.CoverSetPartitioner`:

* block similarity ``S(a[s:e], b[s':e']) = sim[a, b][e, e'] + input term`` (input term:
  ``sim[a, b][s-1, s'-1]``; two raw inputs 1.0; raw input vs feature 0.0);
* objective: sum over sets of ``S(member, anchor)`` over the members other than the anchor;
* every model is cut into ``K`` contiguous blocks of at most
  ``max(ceil(N/K), floor((1+eps) N/K))`` nodes; each set holds exactly one block of each
  model (the block->set map of a model is a permutation);
* per restart: start from the given random cuts (block k in set k), pick anchors, then
  repeat { for each model: move the best cut by +-1 while that raises the objective;
  for each model: best block->set permutation against the anchors (anchor blocks stay);
  re-pick anchors } until nothing changes; keep the best restart.

Everything is Python lists and loops, one restart after the other: each candidate move is
scored by recomputing the model's contribution to the objective. Ties are broken exactly
like the vectorised version (first candidate in the same order), so on the same input and
initial cuts both return the same partition, up to float round-off in near-ties.
"""
import itertools
import math
import time

TOL = 1e-10


def reference_partition(nodes, similarity, num_sets=4, eps=0.2, restarts=200, max_iters=100,
                        seed=0, assignment='free', input_similarity=1.0,
                        input_feature_similarity=0.0, init_starts=None):
    """Run the plain-Python reference; returns a dict (best state and per-restart objectives).

    ``init_starts``: ``[restarts][M][K]`` first node of every block, e.g. from
    :func:`dery.partition.initial_starts` (drawn from it with ``seed`` when None), so that
    both implementations start from the same cuts.
    """
    t0 = time.perf_counter()
    names = list(nodes)
    M, K = len(names), int(num_sets)
    N = [len(nodes[n]) for n in names]
    if init_starts is None:
        from dery.partition import initial_starts
        init_starts = initial_starts(nodes, K, restarts, seed, eps)
    init_starts = [[[int(v) for v in row] for row in rs] for rs in init_starts]
    limit = [max(-(-n // K), int(math.floor((1.0 + eps) * n / K + 1e-9))) for n in N]

    # O[a][b][i][j]: node similarity as nested lists
    O = [[None] * M for _ in range(M)]
    for a in range(M):
        for b in range(M):
            if a == b:
                continue
            key = (names[a], names[b])
            if key in similarity:
                arr = [list(map(float, row)) for row in similarity[key]]
            else:
                t = [list(map(float, row)) for row in similarity[(names[b], names[a])]]
                arr = [list(col) for col in zip(*t)]
            O[a][b] = arr

    def S(a, s, e, b, s2, e2):
        o = O[a][b]
        if s > 0 and s2 > 0:
            inp = o[s - 1][s2 - 1]
        elif s == 0 and s2 == 0:
            inp = input_similarity
        else:
            inp = input_feature_similarity
        return o[e][e2] + inp

    def ends_of(m, st):
        return [st[k + 1] - 1 for k in range(K - 1)] + [N[m] - 1]

    perms = list(itertools.permutations(range(K)))
    restart_objectives = []
    best = None
    for r in range(restarts):
        starts = [list(init_starts[r][m]) for m in range(M)]
        ends = [ends_of(m, starts[m]) for m in range(M)]
        blockset = [list(range(K)) for _ in range(M)]
        setblock = [list(range(K)) for _ in range(M)]

        def set_score(t, i):
            ki = setblock[i][t]
            tot = 0.0
            for j in range(M):
                if j != i:
                    kj = setblock[j][t]
                    tot += S(j, starts[j][kj], ends[j][kj], i, starts[i][ki], ends[i][ki])
            return tot

        def pick(current):
            new, scores, changed = [], [], False
            for t in range(K):
                vals = [set_score(t, i) for i in range(M)]
                bi = 0
                for i in range(1, M):
                    if vals[i] > vals[bi]:
                        bi = i
                if current is None:
                    new.append(bi)
                    scores.append(vals[bi])
                elif vals[bi] > vals[current[t]] + TOL:
                    new.append(bi)
                    scores.append(vals[bi])
                    changed = True
                else:
                    new.append(current[t])
                    scores.append(vals[current[t]])
            return new, scores, changed

        anchors, scores, _ = pick(None)

        def contrib(a, st):
            en = ends_of(a, st)
            tot = 0.0
            for k in range(K):
                t = blockset[a][k]
                i = anchors[t]
                if i == a:
                    for j in range(M):
                        if j != a:
                            kj = setblock[j][t]
                            tot += S(j, starts[j][kj], ends[j][kj], a, st[k], en[k])
                else:
                    ki = setblock[i][t]
                    tot += S(a, st[k], en[k], i, starts[i][ki], ends[i][ki])
            return tot

        it = 0
        for it in range(1, max_iters + 1):
            changed = False
            # inner loop: +-1 cut moves, model by model
            for a in range(M):
                n = N[a]
                for _ in range(4 * n * K):
                    st = starts[a]
                    base = contrib(a, st)
                    best_gain, best_move = -math.inf, None
                    for d in (-1, 1):
                        for k in range(K - 1):
                            c = st[k + 1] + d
                            if c < 1 or c > n - 1:
                                continue
                            nxt = st[k + 2] if k + 2 < K else n
                            if not (1 <= c - st[k] <= limit[a] and 1 <= nxt - c <= limit[a]):
                                continue
                            new = list(st)
                            new[k + 1] = c
                            g = contrib(a, new) - base
                            if g > best_gain:
                                best_gain, best_move = g, (k, d)
                    if best_move is None or best_gain <= TOL:
                        break
                    starts[a][best_move[0] + 1] += best_move[1]
                    ends[a] = ends_of(a, starts[a])
                    changed = True
            # outer loop: reassign blocks to sets (a permutation per model)
            if assignment == 'free' and K > 1:
                new_blocksets = []
                for a in range(M):
                    pinned = {t: setblock[a][t] for t in range(K) if anchors[t] == a}

                    def value(perm):
                        tot = 0.0
                        for k in range(K):
                            t = perm[k]
                            if anchors[t] == a:
                                continue
                            i = anchors[t]
                            ki = setblock[i][t]
                            tot += S(a, starts[a][k], ends[a][k], i, starts[i][ki], ends[i][ki])
                        return tot

                    best_val, best_perm = -math.inf, None
                    for perm in perms:
                        if any(perm[k] != t for t, k in pinned.items()):
                            continue
                        v = value(perm)
                        if v > best_val:
                            best_val, best_perm = v, perm
                    if best_val > value(blockset[a]) + TOL:
                        new_blocksets.append(list(best_perm))
                        changed = True
                    else:
                        new_blocksets.append(blockset[a])
                for a in range(M):
                    blockset[a] = new_blocksets[a]
                    for k in range(K):
                        setblock[a][blockset[a][k]] = k
            anchors, scores, ch = pick(anchors)
            changed = changed or ch
            if not changed:
                break
        obj = sum(scores)
        restart_objectives.append(obj)
        if best is None or obj > best['objective']:
            best = dict(objective=obj, restart=r, starts=[list(s) for s in starts],
                        blockset=[list(b) for b in blockset], anchors=list(anchors),
                        iterations=it)
    return dict(objective=best['objective'], best_restart=best['restart'],
                starts=best['starts'], blockset=best['blockset'], anchors=best['anchors'],
                restart_objectives=restart_objectives,
                seconds=time.perf_counter() - t0)
