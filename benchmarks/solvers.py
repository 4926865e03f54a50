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

    .venv/bin/python benchmarks/solvers.py [--backend cbc|highs] [--seed 0]
"""
import argparse
import random
import time

import numpy as np

from dery.solvers import AssemblyProblem, Candidate, ILPSolver, RandomSearchSolver

STAGE_RES = [56 * 56, 28 * 28, 14 * 14, 7 * 7]
BUDGETS = [(10e6, 3e9), (30e6, 6e9), (50e6, 10e9), (90e6, 20e9)]


def make_zoo(seed, num_models=24, K=4, shift=False):
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
    for p in range(K - 1):
        for a in by_pos[p]:
            for b in by_pos[p + 1]:
                ci, co = width_out[a.id], width_in[b.id]
                params = 0 if a.model == b.model and ci == co else ci * co + co
                sp[(a.id, b.id)] = params
                sf[(a.id, b.id)] = params * STAGE_RES[p + 1]
    return AssemblyProblem(K, cands, sp, sf, base_params=0, base_flops=0,
                           first_stem=stem, last_head=head)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--backend', default='cbc')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    for shift in (False, True):
        problem = make_zoo(args.seed, shift=shift)
        print(f'\n== {"shifted positions (sets bind)" if shift else "paper layout"}: '
              f'{len(problem.candidates)} candidates, K={problem.num_positions}, '
              f'{len(problem.stitch_params)} stitch pairs, backend={args.backend} ==')
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
                enum_best, n_ok, n_all = brute_force_best(problem)
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
