"""Search baselines: random search (the paper's), greedy swap (the original
code's), and exhaustive enumeration for small spaces."""
from __future__ import annotations

import itertools
import random
import time
from typing import Dict, Hashable, List, Optional, Tuple

from dery.errors import ConfigError
from dery.registry import SOLVERS

from .base import BaseSolver
from .ilp import ILPSolver, check_budget
from .problem import AssemblyProblem, ScoreFn, Solution, SolverResult

__all__ = ['RandomSearchSolver', 'GreedySwapSolver', 'ExhaustiveSolver']


@SOLVERS.register_module()
class RandomSearchSolver(BaseSolver):
    """The paper's solver: N random feasible assemblies scored by the proxy.

    Draws one candidate per position uniformly at random and keeps a draw when
    it is feasible (sets, forbidden pairs and the budget) and not seen before:
    rejection sampling, so the kept assemblies are uniform over the feasible
    set, drawn without replacement. Each kept assembly is scored by
    ``score_fn`` (the whole-model proxy); without ``score_fn`` they are ranked by
    the surrogate.

    Args:
        num_samples: feasible assemblies to keep (paper: 500).
        seed: seed of the local ``random.Random`` (global RNG untouched).
        max_draws: cap on draws (default ``max(10000, 200 * num_samples)``). When
            the cap is hit with fewer samples kept, the solver logs the
            feasibility rate and returns what it has; with none it raises the
            budget error, or asks for the ILP when the budget is feasible but
            too rare for rejection sampling.
    """

    def __init__(self, num_samples: int = 500, seed: int = 0,
                 max_draws: Optional[int] = None):
        if int(num_samples) < 1:
            raise ConfigError(f'RandomSearchSolver num_samples must be >= 1, got {num_samples}')
        self.num_samples = int(num_samples)
        self.seed = seed
        self.max_draws = max_draws

    def solve(self, problem: AssemblyProblem,
              score_fn: Optional[ScoreFn] = None) -> SolverResult:
        """Sample, score, rank."""
        t0 = time.perf_counter()
        problem = self._check_problem(problem)
        rng = random.Random(self.seed)
        cap = self.max_draws or max(10000, 200 * self.num_samples)
        seen, kept = set(), []
        draws = feasible_draws = 0
        while len(kept) < self.num_samples and draws < cap:
            ids = self._draw(problem, rng)
            draws += 1
            if not problem.is_feasible(ids):
                continue
            feasible_draws += 1
            if ids in seen:
                continue
            seen.add(ids)
            kept.append(problem.make_solution(ids))
        rate = feasible_draws / max(draws, 1)
        if not kept:
            check_budget(problem)
            raise ConfigError(
                f'random search found no feasible assembly in {draws} draws although the '
                'budget is feasible (the feasible fraction is tiny); use ILPSolver or '
                'raise max_draws')
        if len(kept) < self.num_samples:
            self._logger().warning(
                f'RandomSearchSolver: only {len(kept)} distinct feasible assemblies in '
                f'{draws} draws (feasibility rate {rate:.4f}); the space or the budget '
                'is small')
        evals = self._score_all(kept, score_fn)
        info = dict(seed=self.seed, draws=draws, feasible_draws=feasible_draws,
                    feasibility_rate=rate, num_samples=len(kept))
        return self._result('RandomSearchSolver', kept, 'feasible', t0, evals, info)


@SOLVERS.register_module()
class GreedySwapSolver(BaseSolver):
    """The original code's swap search, fixed.

    Start from a feasible assembly (rejection-sampled; the ILP's surrogate
    optimum when sampling fails), then for ``iters`` proposals: pick a random
    position and a random other candidate there among those that keep the
    assembly feasible (sets, forbidden pairs, and the budget checked on the new
    assembly, stitches, stem and head included); accept the swap when its
    whole-model score is strictly higher. Fixes relative to the original: constraints are re-checked
    after every swap, the current score is updated on acceptance, the best seen
    assembly is kept, and an assembly is never scored twice (a cache, so
    ``num_proxy_evals`` counts real evaluations). Without ``score_fn`` the
    surrogate is the score (a local search on the surrogate).

    Args:
        iters: swap proposals per restart.
        seed: seed of the local ``random.Random``.
        restarts: independent starts.
        max_draws: draws allowed to find a feasible start.
    """

    def __init__(self, iters: int = 200, seed: int = 0, restarts: int = 1,
                 max_draws: int = 10000):
        self.iters = int(iters)
        self.seed = seed
        self.restarts = max(1, int(restarts))
        self.max_draws = int(max_draws)

    def solve(self, problem: AssemblyProblem,
              score_fn: Optional[ScoreFn] = None) -> SolverResult:
        """Run the swap search; ``assemblies`` lists every distinct one scored."""
        t0 = time.perf_counter()
        problem = self._check_problem(problem)
        rng = random.Random(self.seed)
        cache: Dict[Tuple[Hashable, ...], Solution] = {}
        evals = 0

        def value(ids) -> float:
            nonlocal evals
            a = cache.get(ids)
            if a is None:
                a = problem.make_solution(ids)
                if score_fn is not None:
                    a.proxy_score = self._call_score(score_fn, ids)
                    evals += 1
                cache[ids] = a
            return a.proxy_score if score_fn is not None else a.surrogate

        accepted = 0
        for _ in range(self.restarts):
            cur, _ = self._random_feasible(problem, rng, self.max_draws)
            if cur is None:
                check_budget(problem)  # raises when the budget is infeasible
                cur = ILPSolver(top_m=1).solve(problem).best.candidate_ids
            cur_val = value(cur)
            for _ in range(self.iters):
                p = rng.randrange(problem.num_positions)
                swaps = [cur[:p] + (c.id,) + cur[p + 1:] for c in problem.by_position[p]
                         if c.id != cur[p]]
                swaps = [ids for ids in swaps if problem.is_feasible(ids)]
                if not swaps:
                    continue
                new = swaps[rng.randrange(len(swaps))]
                new_val = value(new)
                if new_val > cur_val:
                    cur, cur_val = new, new_val
                    accepted += 1
        assemblies = list(cache.values())
        info = dict(seed=self.seed, iters=self.iters, restarts=self.restarts,
                    accepted_swaps=accepted)
        return self._result('GreedySwapSolver', assemblies, 'feasible', t0, evals, info)


@SOLVERS.register_module()
class ExhaustiveSolver(BaseSolver):
    """Enumerate every assembly (small spaces only; tests use it to prove the ILP).

    Without ``score_fn`` the feasible assemblies are ranked by the surrogate;
    with it, every feasible assembly is scored by the proxy (the exact proxy
    optimum). ``assemblies`` keeps the ``top_m`` best (None: all).

    Args:
        top_m: how many ranked assemblies to return (None: all feasible).
        max_assemblies: refuse spaces larger than this (product of candidates
            per position).
    """

    def __init__(self, top_m: Optional[int] = 10, max_assemblies: int = 200000):
        self.top_m = top_m
        self.max_assemblies = int(max_assemblies)

    def solve(self, problem: AssemblyProblem,
              score_fn: Optional[ScoreFn] = None) -> SolverResult:
        """Enumerate, filter feasible, rank."""
        t0 = time.perf_counter()
        problem = self._check_problem(problem)
        n = problem.num_assemblies()
        if n > self.max_assemblies:
            raise ConfigError(
                f'ExhaustiveSolver: {n} assemblies exceed max_assemblies='
                f'{self.max_assemblies}; use ILPSolver for spaces this large')
        feasible: List[Solution] = []
        for combo in itertools.product(*problem.by_position):
            ids = tuple(c.id for c in combo)
            if problem.is_feasible(ids):
                feasible.append(problem.make_solution(ids))
        if not feasible:
            check_budget(problem)
            raise RuntimeError('ExhaustiveSolver: no feasible assembly')  # unreachable
        evals = self._score_all(feasible, score_fn)
        result = self._result('ExhaustiveSolver', feasible, 'optimal', t0, evals,
                              dict(num_feasible=len(feasible), num_assemblies=n))
        keep = result.ranked if self.top_m is None else result.ranked[:self.top_m]
        result.assemblies = list(keep)
        result.ranked = list(keep)
        return result
