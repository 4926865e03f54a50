"""Solver-only micro benchmark at the paper's scale (synthetic tables, no models).

A zoo of 24 synthetic models cut into K=4 blocks (96 candidates, one per block at
its set's position) with pairwise stitch costs (1x1 conv between the widths of
consecutive blocks, FLOPs at the stage's resolution), a stem that depends on
the first block and a head that depends on the last one. For the paper's four
budgets DeRy(4, C_param M, C_FLOPs G) it reports the ILP's time for the top-1
and top-10 solutions, checks the top-1 against a vectorised enumeration of all
24^4 assemblies, and measures random search: the feasibility rate of uniform
draws and the best surrogate among 500 feasible samples (the paper's solver).

A second variant lets every block also sit at its own depth index when that
differs from its set (more candidates, the at-most-one-per-set rows bind).

A third runs the paper layout under ``assembly.resolution='chain'`` (blocks
run at the resolution the chain delivers; stitches stride by the documented
rule, never interpolate): block FLOPs, stitch params/FLOPs and the head then
depend on the resolution each block receives, i.e. on every block before it,
and the ILP carries resolution as a state of its flow (``StateTables``). Its
top-1 is checked against a vectorised enumeration of all 24^4 assemblies that
walks the resolution through each one.

    .venv/bin/python benchmarks/solvers.py [--backend cbc|highs] [--seed 0]
"""
import argparse
import random
import time

import numpy as np

from dery.solvers import AssemblyProblem, Candidate, ILPSolver, RandomSearchSolver, StateTables

STAGE_RES = [56 * 56, 28 * 28, 14 * 14, 7 * 7]
BUDGETS = [(10e6, 3e9), (30e6, 6e9), (50e6, 10e9), (90e6, 20e9)]


def make_zoo(seed, num_models=24, K=4, shift=False, chain=False):
    """Synthetic zoo tables (params/FLOPs ranges of ResNets, ViTs, Swins, RegNets)."""
    r = random.Random(seed)
    cands, width_in, width_out = [], {}, {}
    stem, head = {}, {}
    for m in range(num_models):
        total_p = float(np.exp(r.uniform(np.log(3e6), np.log(300e6))))  # log-uniform
        total_f = total_p * r.uniform(50, 250)
        pf = np.array([0.05, 0.15, 0.35, 0.45]) * np.exp([r.gauss(0, 0.2) for _ in range(K)])
        ff = np.array([0.3, 0.3, 0.25, 0.15]) * np.exp([r.gauss(0, 0.2) for _ in range(K)])
        pf, ff = pf / pf.sum(), ff / ff.sum()
        base_w = r.choice([32, 48, 64, 96, 128, 192])
        widths = [base_w * 2 ** k for k in range(K)]
        quality = r.uniform(0, 1)
        # partition: block k of model m goes to set perm[k] (mostly the identity)
        perm = list(range(K))
        if r.random() < 0.3:
            i = r.randrange(K - 1)
            perm[i], perm[i + 1] = perm[i + 1], perm[i]
        for k in range(K):
            positions = {perm[k]} | ({k} if shift else set())
            for p in sorted(positions):
                cid = f'm{m}.b{k}@{p}'
                cands.append(Candidate(
                    id=cid, model=f'model{m}', start=f'b{k}', end=f'b{k}', set=perm[k],
                    position=p, params=int(total_p * pf[k]), flops=int(total_f * ff[k]),
                    score=round(quality + r.gauss(0, 0.3), 4)))
                width_in[cid] = widths[k] // 2 if k else 3
                width_out[cid] = widths[k]
                if p == 0:
                    stem[cid] = (int(r.uniform(1e3, 1e5)), int(r.uniform(1e7, 2e8)))
                if p == K - 1:
                    head[cid] = (widths[k] * 1000 + 1000, widths[k] * 1000)
    sp, sf = {}, {}
    by_pos = [[c for c in cands if c.position == p] for p in range(K)]
    if chain:
        return AssemblyProblem(K, cands, base_params=0, base_flops=0, first_stem=stem,
                               states=chain_states(cands, by_pos, width_in, width_out, K))
    for p in range(K - 1):
        for a in by_pos[p]:
            for b in by_pos[p + 1]:
                ci, co = width_out[a.id], width_in[b.id]
                params = 0 if a.model == b.model and ci == co else ci * co + co
                sp[(a.id, b.id)] = params
                sf[(a.id, b.id)] = params * STAGE_RES[p + 1]
    return AssemblyProblem(K, cands, sp, sf, base_params=0, base_flops=0,
                           first_stem=stem, last_head=head)


NATIVE_IN = [56, 56, 28, 14]  # input side of block k in its own model; block k >= 1 halves it
STEM_SIDE = 56


def chain_stride(delivered, native):
    """``dery.models.chain_stride`` on square maps (kept here: this benchmark builds no models)."""
    return delivered // native if delivered % native == 0 and delivered // native >= 2 else 1


def chain_states(cands, by_pos, width_in, width_out, K):
    """'chain' tables: block k runs at the side it is given (FLOPs ~ side^2, output halved for
    k >= 1, rounded up as a padded stride-2 conv), a stitch strides by the rule (its kernel
    s x s), the head pools the last map. States: the side a block receives."""
    def out_side(c, side):
        return -(-side // 2) if int(c.start[1:]) else side

    first = {c.id: STEM_SIDE for c in by_pos[0]}
    block, stitch, head = {}, {}, {}
    reach = {c.id: {STEM_SIDE} for c in by_pos[0]}
    for p in range(K):
        for c in by_pos[p]:
            native = NATIVE_IN[int(c.start[1:])]
            for side in reach.get(c.id, ()):
                block[(c.id, side)] = (c.params, int(c.flops * side * side / (native * native)))
                if p == K - 1:
                    o = out_side(c, side)
                    head[(c.id, side)] = (width_out[c.id] * 1000 + 1000, width_out[c.id] * (1000 + o * o))
        if p == K - 1:
            break
        for a in by_pos[p]:
            for side in reach.get(a.id, ()):
                o = out_side(a, side)
                for b in by_pos[p + 1]:
                    ci, co = width_out[a.id], width_in[b.id]
                    if a.model == b.model and ci == co:
                        cost = (0, 0, o)
                    else:
                        s = chain_stride(o, NATIVE_IN[int(b.start[1:])])
                        t = o // s
                        cost = (ci * co * s * s + co, ci * co * s * s * t * t, t)
                    stitch[(a.id, side, b.id)] = cost
                    reach.setdefault(b.id, set()).add(cost[2])
    return StateTables(first=first, block=block, stitch=stitch, head=head)


def brute_force_best(problem):
    """Best surrogate over all assemblies by numpy broadcasting (set = position only)."""
    K = problem.num_positions
    pos = problem.by_position
    n = [len(c) for c in pos]
    shape = lambda p: [n[q] if q == p else 1 for q in range(K)]  # noqa: E731
    P = np.zeros(n, dtype=np.float64)
    F = np.zeros(n, dtype=np.float64)
    S = np.zeros(n, dtype=np.float64)
    for p in range(K):
        cp = np.array([c.params + (problem.stem_cost(c.id)[0] if p == 0 else 0)
                       + (problem.head_cost(c.id)[0] if p == K - 1 else 0) for c in pos[p]])
        cf = np.array([c.flops + (problem.stem_cost(c.id)[1] if p == 0 else 0)
                       + (problem.head_cost(c.id)[1] if p == K - 1 else 0) for c in pos[p]])
        P += cp.reshape(shape(p))
        F += cf.reshape(shape(p))
        S += np.array([c.score for c in pos[p]]).reshape(shape(p))
    for p in range(K - 1):
        sh = [n[q] if q in (p, p + 1) else 1 for q in range(K)]
        P += np.array([[problem.stitch_params[(a.id, b.id)] for b in pos[p + 1]]
                       for a in pos[p]]).reshape(sh)
        F += np.array([[problem.stitch_flops[(a.id, b.id)] for b in pos[p + 1]]
                       for a in pos[p]]).reshape(sh)
    (_, p_hi), (_, f_hi) = problem.constraints['params'], problem.constraints['flops']
    ok = (P <= p_hi) & (F <= f_hi)
    return float(S[ok].max()) if ok.any() else None, int(ok.sum()), ok.size


def brute_force_chain(problem):
    """:func:`brute_force_best` under states: each assembly's resolution walked through it."""
    K, S, pos = problem.num_positions, problem.states, problem.by_position
    verts = [{} for _ in range(K)]  # position -> {(id, state): vertex index}
    for c in pos[0]:
        verts[0][(c.id, S.first[c.id])] = len(verts[0])
    edges = []
    for p in range(K - 1):
        n = len(pos[p + 1])
        ep, ef = np.zeros((len(verts[p]), n)), np.zeros((len(verts[p]), n))
        nxt = np.full((len(verts[p]), n), -1, dtype=np.int64)
        for (cid, st), v in verts[p].items():
            for q, b in enumerate(pos[p + 1]):
                e = S.stitch.get((cid, st, b.id))
                if e is None or problem.is_forbidden(cid, b.id):
                    continue
                key = (b.id, e[2])
                if key not in verts[p + 1]:
                    verts[p + 1][key] = len(verts[p + 1])
                ep[v, q], ef[v, q], nxt[v, q] = e[0], e[1], verts[p + 1][key]
        edges.append((ep, ef, nxt))

    def vertex_costs(p):
        bp, bf = np.zeros(len(verts[p])), np.zeros(len(verts[p]))
        for (cid, st), v in verts[p].items():
            bp[v], bf[v] = S.block[(cid, st)]
            if p == K - 1:
                hp, hf = S.head.get((cid, st), (0, 0))
                bp[v] += hp
                bf[v] += hf
        return bp, bf

    bp, bf = vertex_costs(0)
    v = np.arange(len(verts[0]))
    stem = np.array([problem.stem_cost(cid) for (cid, _) in verts[0]], dtype=np.float64).reshape(-1, 2)
    P, F = bp[v] + stem[:, 0], bf[v] + stem[:, 1]
    score = np.array([problem.by_id[cid].score for (cid, _) in verts[0]])
    ok = np.ones(len(v), dtype=bool)
    for p in range(K - 1):
        ep, ef, nxt = edges[p]
        nv = nxt[v]  # [N, candidates at p + 1]
        bp, bf = vertex_costs(p + 1)
        valid = ok[:, None] & (nv >= 0)
        nv_safe = np.where(nv >= 0, nv, 0)
        P = (P[:, None] + ep[v] + bp[nv_safe]).ravel()
        F = (F[:, None] + ef[v] + bf[nv_safe]).ravel()
        score = (score[:, None] + np.array([b.score for b in pos[p + 1]])[None, :]).ravel()
        ok, v = valid.ravel(), nv_safe.ravel()
    (_, p_hi), (_, f_hi) = problem.constraints['params'], problem.constraints['flops']
    ok &= (P <= p_hi) & (F <= f_hi)
    return float(score[ok].max()) if ok.any() else None, int(ok.sum()), ok.size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--backend', default='cbc')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    for shift, chain in ((False, False), (True, False), (False, True)):
        problem = make_zoo(args.seed, shift=shift, chain=chain)
        name = ('shifted positions (sets bind)' if shift else
                "paper layout, resolution='chain' (resolution as ILP state)" if chain else 'paper layout')
        pairs = (f'{sum(map(len, problem.reachable.values()))} (block, resolution) states, '
                 f'{len(problem.states.stitch)} stitch edges' if chain
                 else f'{len(problem.stitch_params)} stitch pairs')
        print(f'\n== {name}: {len(problem.candidates)} candidates, K={problem.num_positions}, '
              f'{pairs}, backend={args.backend} ==')
        print(f'{"budget":>14} {"top1 s":>7} {"top10 s":>8} {"best surr":>9} '
              f'{"enum best":>9} {"feasible":>9} {"rand rate":>9} {"rand500 best":>12} '
              f'{"rand s":>6}')
        for max_p, max_f in BUDGETS:
            problem.constraints = dict(params=(None, int(max_p)), flops=(None, int(max_f)))
            problem.validate()
            t = time.perf_counter()
            top1 = ILPSolver(top_m=1, backend=args.backend).solve(problem)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            top10 = ILPSolver(top_m=10, backend=args.backend).solve(problem)
            t10 = time.perf_counter() - t
            assert all(problem.is_feasible(a.candidate_ids) for a in top10.assemblies)
            if not shift:
                enum_best, n_ok, n_all = (brute_force_chain if chain else brute_force_best)(problem)
                enum = f'{enum_best:9.4f}'
                assert abs(enum_best - top1.best.surrogate) < 1e-6, (enum_best, top1.best)
                feas = f'{n_ok / n_all:9.4f}'
            else:
                enum, feas = f'{"-":>9}', f'{"-":>9}'
            t = time.perf_counter()
            rnd = RandomSearchSolver(num_samples=500, seed=args.seed).solve(problem)
            tr = time.perf_counter() - t
            print(f'{f"{max_p / 1e6:.0f}M/{max_f / 1e9:.0f}G":>14} {t1:7.2f} {t10:8.2f} '
                  f'{top1.best.surrogate:9.4f} {enum} {feas} '
                  f'{rnd.info["feasibility_rate"]:9.4f} {rnd.best.surrogate:12.4f} {tr:6.2f}')
    print('\ncolumns: ILP wall time for top-1 / top-10 (pulp model build + solves); best '
          'surrogate of the ILP and of full enumeration (must match); fraction of all '
          'assemblies within budget; random search: feasibility rate of uniform draws and '
          'best surrogate among its 500 feasible samples (no proxy in this benchmark).')


if __name__ == '__main__':
    main()
