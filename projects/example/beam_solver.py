"""A solver registered from outside ``dery``: beam search over the stage positions.

Builds assemblies position by position, keeping the ``beam_width`` partial
assemblies with the best surrogate score (the sum of the per-block scores the
assemble stage computed) whose cost so far already fits the budget (costs only
grow as blocks are added, so a partial assembly over the maximum can be
dropped). The complete feasible ones are ranked by surrogate, and the best
``top_m`` are scored with the whole-model proxy (``score_fn``).
"""
import time

from dery.registry import SOLVERS
from dery.solvers import BaseSolver, check_budget


@SOLVERS.register_module()
class BeamSolver(BaseSolver):
    """Beam search on the surrogate, proxy re-ranking of the top ``top_m``.

    Args:
        beam_width (int): partial assemblies kept per position.
        top_m (int): complete assemblies scored by the proxy.
    """

    def __init__(self, beam_width=16, top_m=4):
        if int(beam_width) < 1 or int(top_m) < 1:
            raise ValueError(f'beam_width and top_m must be >= 1, got {beam_width}, {top_m}')
        self.beam_width = int(beam_width)
        self.top_m = int(top_m)

    def solve(self, problem, score_fn=None):
        t0 = time.perf_counter()
        problem = self._check_problem(problem)
        max_params = problem.constraints['params'][1]
        max_flops = problem.constraints['flops'][1]

        def may_fit(ids):
            params, flops = problem.cost(ids)  # a lower bound of every completion's cost
            return (max_params is None or params <= max_params) and (max_flops is None or flops <= max_flops)

        beam = [()]
        for p in range(problem.num_positions):
            grown = []
            for ids in beam:
                used = {problem.by_id[i].set for i in ids}
                for c in problem.by_position[p]:
                    if c.set is not None and c.set in used:
                        continue
                    if ids and problem.is_forbidden(ids[-1], c.id):
                        continue
                    new = ids + (c.id, )
                    if may_fit(new):
                        grown.append(new)
            grown.sort(key=lambda ids: (-problem.surrogate(ids), tuple(str(i) for i in ids)))
            beam = grown[:self.beam_width]
        complete = [problem.make_solution(ids) for ids in beam if problem.is_feasible(ids)]
        if not complete:
            check_budget(problem)  # raises when no assembly fits the budget at all
            raise ValueError(f'BeamSolver found no feasible assembly with beam_width={self.beam_width}; '
                             'raise beam_width')
        top = complete[:self.top_m]
        evals = self._score_all(top, score_fn)
        return self._result('BeamSolver', top, 'feasible', t0, evals,
                            info=dict(beam_width=self.beam_width, complete=len(complete)))
