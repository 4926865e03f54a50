"""Solvers that pick one block per stage position under params/FLOPs budgets.

``ILPSolver`` (exact integer program over a linear surrogate, top-M re-ranked by
the whole-model proxy), ``RandomSearchSolver`` (the paper's), ``GreedySwapSolver``
(the original code's) and ``ExhaustiveSolver`` (small spaces), all registered in
``dery.registry.SOLVERS``::

    solver = SOLVERS.build(dict(type='ILPSolver', top_m=10))
    result = solver.solve(problem, score_fn=None)   # -> SolverResult
"""
from .base import BaseSolver
from .ilp import ILPSolver, check_budget, extreme_costs
from .problem import AssemblyProblem, Candidate, Solution, SolverResult, StateTables, normalize_constraints
from .search import ExhaustiveSolver, GreedySwapSolver, RandomSearchSolver

__all__ = ['BaseSolver', 'ILPSolver', 'RandomSearchSolver', 'GreedySwapSolver',
           'ExhaustiveSolver', 'AssemblyProblem', 'Candidate', 'Solution', 'StateTables',
           'SolverResult', 'normalize_constraints', 'check_budget', 'extreme_costs']
