"""Solvers: the ILP is exact (checked against enumeration), every solver returns
only feasible assemblies, and budget errors say what is achievable."""
import json
import random

import pytest

from dery.registry import SOLVERS
from dery.solvers import (AssemblyProblem, Candidate, ExhaustiveSolver, GreedySwapSolver,
                          ILPSolver, RandomSearchSolver, SolverResult, extreme_costs)


def make_problem(seed, K=None, n=None, tight=True, constraints=None):
    """A random small instance with pairwise stitch costs, stem/head, sets and a
    budget that one random assembly satisfies (so it is feasible)."""
    r = random.Random(seed)
    K = K or r.choice([3, 4])
    n = n or r.choice([3, 4])
    cands = []
    for p in range(K):
        for m in range(n):
            # sets: mostly the position, sometimes a neighbour's, so the
            # at-most-one-per-set rows bind
            s = p if r.random() < 0.7 else r.randrange(K)
            cands.append(Candidate(
                id=f'm{m}.p{p}', model=f'm{m}', start=f'n{p}', end=f'n{p}',
                set=s, position=p, params=r.randint(1000, 90000),
                flops=r.randint(10 ** 6, 9 * 10 ** 7), score=round(r.uniform(0, 10), 3)))
    forbidden = set()
    sp, sf, ss = {}, {}, {}
    for p in range(K - 1):
        for a in cands:
            for b in cands:
                if a.position == p and b.position == p + 1:
                    if r.random() < 0.1:
                        forbidden.add((a.id, b.id))
                        continue
                    sp[(a.id, b.id)] = r.randint(0, 20000)
                    sf[(a.id, b.id)] = r.randint(0, 2 * 10 ** 7)
                    ss[(a.id, b.id)] = -round(r.uniform(0, 2), 3)
    stem = {c.id: (r.randint(100, 5000), r.randint(10 ** 5, 10 ** 7))
            for c in cands if c.position == 0}
    head = {c.id: (r.randint(100, 5000), r.randint(10 ** 3, 10 ** 5))
            for c in cands if c.position == K - 1}
    problem = AssemblyProblem(K, cands, sp, sf, base_params=777, base_flops=12345,
                              first_stem=stem, last_head=head, stitch_score=ss,
                              forbidden_pairs=sorted(forbidden))
    if constraints is None:
        # a random valid assembly fixes a feasible budget around its cost
        while True:
            ids = tuple(r.choice(problem.by_position[p]).id for p in range(K))
            if problem.structure_error(ids) is None:
                break
        params, flops = problem.cost(ids)
        lo = (lambda v: int(v * r.uniform(0.6, 1.0))) if r.random() < 0.5 else (lambda v: None)
        f = r.uniform(1.0, 1.15) if tight else 10.0
        constraints = dict(params=(lo(params), int(params * f)),
                           flops=(lo(flops), int(flops * f)))
    problem.constraints = constraints
    problem.validate()
    return problem


def brute_force(problem):
    return ExhaustiveSolver(top_m=None).solve(problem)


@pytest.mark.parametrize('seed', range(20))
def test_ilp_matches_exhaustive_top_m(seed):
    problem = make_problem(seed)
    exact = brute_force(problem)
    res = ILPSolver(top_m=5).solve(problem)
    assert res.status == 'optimal'
    want = [a.surrogate for a in exact.ranked[:5]]
    got = [a.surrogate for a in res.assemblies]
    # the k-th no-good solution is the k-th best assembly overall
    assert got == pytest.approx(want, abs=1e-6)
    assert res.best.surrogate == pytest.approx(exact.best.surrogate, abs=1e-6)
    for a in res.assemblies:
        assert problem.is_feasible(a.candidate_ids)
        assert (a.params, a.flops) == problem.cost(a.candidate_ids)


def test_nogood_cuts_distinct_nonincreasing():
    problem = make_problem(3, K=4, n=4, tight=False)
    res = ILPSolver(top_m=20).solve(problem)
    ids = [a.candidate_ids for a in res.assemblies]
    assert len(ids) == 20 and len(set(ids)) == 20
    vals = [a.surrogate for a in res.assemblies]
    assert all(x >= y - 1e-9 for x, y in zip(vals, vals[1:]))
    assert res.info['num_found'] == 20 and len(res.info['solve_seconds']) >= 20


def test_ilp_stops_when_space_exhausted():
    problem = make_problem(5, K=3, n=3, tight=False)
    n_feasible = brute_force(problem).info['num_feasible']
    res = ILPSolver(top_m=1000).solve(problem)
    assert len(res.assemblies) == n_feasible


@pytest.mark.parametrize('seed', range(5))
def test_all_solvers_return_feasible(seed):
    problem = make_problem(100 + seed)
    solvers = [ILPSolver(top_m=3), RandomSearchSolver(num_samples=30, seed=seed),
               GreedySwapSolver(iters=30, seed=seed), ExhaustiveSolver(top_m=5)]
    for solver in solvers:
        res = solver.solve(problem, score_fn=lambda ids: problem.surrogate(ids) + len(ids[0]))
        assert isinstance(res, SolverResult)
        assert res.assemblies and res.best is res.ranked[0]
        for a in res.assemblies:
            assert problem.is_feasible(a.candidate_ids), type(solver).__name__


def test_rerank_by_score_fn_and_count_evals():
    problem = make_problem(7, K=4, n=4, tight=False)
    calls = []

    def score_fn(ids):
        calls.append(ids)
        return -problem.surrogate(ids)  # the proxy disagrees with the surrogate

    res = ILPSolver(top_m=6).solve(problem, score_fn=score_fn)
    assert res.num_proxy_evals == len(calls) == 6
    assert res.best.candidate_ids == res.assemblies[-1].candidate_ids
    assert [a.proxy_score for a in res.ranked] == sorted(
        [a.proxy_score for a in res.ranked], reverse=True)


def test_random_search_deterministic_and_distinct():
    problem = make_problem(11, K=4, n=4, tight=False)
    a = RandomSearchSolver(num_samples=40, seed=1).solve(problem)
    b = RandomSearchSolver(num_samples=40, seed=1).solve(problem)
    c = RandomSearchSolver(num_samples=40, seed=2).solve(problem)
    ids = [x.candidate_ids for x in a.assemblies]
    assert ids == [x.candidate_ids for x in b.assemblies]
    assert ids != [x.candidate_ids for x in c.assemblies]
    assert len(set(ids)) == len(ids)
    assert 0 < a.info['feasibility_rate'] <= 1


def test_greedy_swap_improves_and_caches():
    problem = make_problem(13, K=4, n=4, tight=False)
    seen = []

    def score_fn(ids):
        seen.append(ids)
        return problem.surrogate(ids)

    res = GreedySwapSolver(iters=60, seed=0).solve(problem, score_fn=score_fn)
    assert len(seen) == len(set(seen)) == res.num_proxy_evals == len(res.assemblies)
    assert res.best.proxy_score == max(a.proxy_score for a in res.assemblies)
    assert res.best.proxy_score >= res.assemblies[0].proxy_score


def test_infeasible_budget_states_smallest_model():
    problem = make_problem(4, tight=False)
    ext = extreme_costs(problem)
    min_params, min_flops = ext['min_params'][0], ext['min_flops'][1]
    # check against enumeration
    allp = ExhaustiveSolver(top_m=None).solve(
        make_problem(4, constraints={})).ranked
    assert min_params == min(a.params for a in allp)
    assert min_flops == min(a.flops for a in allp)
    problem.constraints = dict(params=(None, min_params - 1), flops=(None, min_flops - 1))
    problem.validate()
    for solver in (ILPSolver(), RandomSearchSolver(num_samples=5),
                   GreedySwapSolver(iters=5), ExhaustiveSolver()):
        with pytest.raises(ValueError, match='budget infeasible') as e:
            solver.solve(problem)
        msg = str(e.value)
        assert str(min_params) in msg and str(min_flops) in msg and 'Raise the max' in msg


def test_infeasible_min_bound_and_joint():
    problem = make_problem(4, tight=False)
    ext = extreme_costs(problem)
    problem.constraints = dict(params=(ext['max_params'][0] + 1, None))
    problem.validate()
    with pytest.raises(ValueError, match='largest achievable model has '
                                         f'{ext["max_params"][0]}'):
        ILPSolver().solve(problem)


def test_min_greater_than_max_names_bound():
    with pytest.raises(ValueError, match=r'constraints.flops: min \(10\) is larger than max'):
        make_problem(0, constraints=dict(params=(None, 10 ** 9), flops=(10, 5)))
    with pytest.raises(ValueError, match='unknown key'):
        make_problem(0, constraints=dict(param=(None, 5)))


def test_problem_validation_errors():
    c = [Candidate('a', 'm', 0, 0, 0, 0, 10, 10), Candidate('b', 'm', 1, 1, 1, 1, 10, 10),
         Candidate('c', 'n', 1, 1, 1, 1, 10, 10)]
    with pytest.raises(ValueError, match="no entry for the consecutive pair"):
        AssemblyProblem(2, c, stitch_params={('a', 'b'): 1})
    with pytest.raises(ValueError, match='position 1 has no candidate'):
        AssemblyProblem(2, c[:1])
    with pytest.raises(ValueError, match='appears twice'):
        AssemblyProblem(2, c + c[:1])
    p = AssemblyProblem(2, c, stitch_params={('a', 'b'): 1}, forbidden_pairs=[('a', 'c')])
    assert ILPSolver().solve(p).best.candidate_ids == ('a', 'b')


def test_structurally_impossible():
    # both positions only have candidates of the same set
    c = [Candidate('a', 'm', 0, 0, 0, 0, 10, 10), Candidate('b', 'm', 1, 1, 0, 1, 10, 10)]
    with pytest.raises(ValueError, match='even without a budget'):
        ILPSolver().solve(AssemblyProblem(2, c))


def test_registry_and_json():
    problem = make_problem(21)
    solver = SOLVERS.build(dict(type='ILPSolver', top_m=3))
    res = solver.solve(problem)
    d = res.to_dict(problem)
    json.dumps(d)
    assert d['best']['blocks'][0]['position'] == 0 and len(d['ranked']) == len(res.ranked)
    for name in ('RandomSearchSolver', 'GreedySwapSolver', 'ExhaustiveSolver'):
        assert SOLVERS.get(name) is not None


def test_highs_backend_agrees():
    pytest.importorskip('highspy')
    for seed in range(3):
        problem = make_problem(200 + seed)
        a = ILPSolver(top_m=3, backend='highs').solve(problem)
        b = ILPSolver(top_m=3).solve(problem)
        assert [x.surrogate for x in a.assemblies] == pytest.approx(
            [x.surrogate for x in b.assemblies], abs=1e-6)


def test_large_counts_exact():
    # paper-scale counts (1e7 params, 1e10 FLOPs): exact integer feasibility holds
    problem = make_problem(31, K=4, n=4, tight=True)
    for c in problem.candidates:
        c.params *= 1000
        c.flops *= 1000
    problem.stitch_params = {k: v * 1000 for k, v in problem.stitch_params.items()}
    problem.stitch_flops = {k: v * 1000 for k, v in problem.stitch_flops.items()}
    exact = ExhaustiveSolver(top_m=1).solve(make_problem(31, constraints={}))
    best = exact.best.candidate_ids
    problem.constraints = dict(params=(None, problem.cost(best)[0]),
                               flops=(None, problem.cost(best)[1]))
    problem.validate()
    res = ILPSolver(top_m=3).solve(problem)
    ex = ExhaustiveSolver(top_m=3).solve(problem)
    assert res.best.surrogate == pytest.approx(ex.best.surrogate, abs=1e-6)
    assert all(problem.is_feasible(a.candidate_ids) for a in res.assemblies)
