"""Shared pieces of the solvers: proxy scoring/ranking and random draws."""
from __future__ import annotations

import math
import random
import time
from typing import Hashable, List, Optional, Sequence, Tuple

from dery.errors import ConfigError
from dery.utils import get_logger

from .problem import AssemblyProblem, ScoreFn, Solution, SolverResult, rank_key

__all__ = ['BaseSolver']


class BaseSolver:
    """Base class: ``solve(problem, score_fn=None) -> SolverResult``.

    ``score_fn(candidate_ids) -> float`` builds the whole model of an assembly
    and scores it with the training-free proxy (higher is better); each call is
    counted in ``SolverResult.num_proxy_evals``.
    """

    def solve(self, problem: AssemblyProblem,
              score_fn: Optional[ScoreFn] = None) -> SolverResult:
        """Solve ``problem``; see the subclasses."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_problem(problem) -> AssemblyProblem:
        if not isinstance(problem, AssemblyProblem):
            raise TypeError(
                f'solve() expects an AssemblyProblem, got {type(problem).__name__}; '
                'build one with dery.solvers.AssemblyProblem(...)')
        problem.validate()  # re-check: tables or constraints may have been edited
        return problem

    @staticmethod
    def _call_score(score_fn: ScoreFn, ids: Tuple[Hashable, ...]) -> float:
        value = score_fn(tuple(ids))
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f'score_fn returned {value!r} for assembly {list(ids)}; it must return '
                'a float (higher is better)') from None
        if not math.isfinite(value):
            raise ConfigError(
                f'score_fn returned {value} for assembly {list(ids)}; the proxy must be '
                'finite: check the built model and the proxy data')
        return value

    def _score_all(self, assemblies: Sequence[Solution],
                   score_fn: Optional[ScoreFn]) -> int:
        """Fill ``proxy_score`` of each assembly; return the number of calls."""
        if score_fn is None:
            return 0
        n = 0
        for a in assemblies:
            if a.proxy_score is None:
                a.proxy_score = self._call_score(score_fn, a.candidate_ids)
                n += 1
        return n

    @staticmethod
    def _result(name: str, assemblies: List[Solution], status: str, t0: float,
                num_evals: int, info: Optional[dict] = None) -> SolverResult:
        ranked = sorted(assemblies, key=rank_key)
        return SolverResult(assemblies=list(assemblies), best=ranked[0], status=status,
                            seconds=time.perf_counter() - t0, num_proxy_evals=num_evals,
                            ranked=ranked, solver=name, info=dict(info or {}))

    @staticmethod
    def _draw(problem: AssemblyProblem, rng: random.Random) -> Tuple[Hashable, ...]:
        """One candidate per position, uniformly at random (may be infeasible)."""
        return tuple(cands[rng.randrange(len(cands))].id
                     for cands in problem.by_position)

    def _random_feasible(self, problem: AssemblyProblem, rng: random.Random,
                         max_draws: int) -> Tuple[Optional[Tuple[Hashable, ...]], int]:
        """Rejection-sample one feasible assembly; (ids or None, draws used)."""
        for k in range(1, max_draws + 1):
            ids = self._draw(problem, rng)
            if problem.is_feasible(ids):
                return ids, k
        return None, max_draws

    @staticmethod
    def _logger():
        return get_logger()
