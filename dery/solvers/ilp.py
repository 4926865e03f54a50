"""Exact 0-1 integer program for the reassembly choice (pulp + CBC).

Formulation (K positions, candidates ``c`` with position ``pos(c)``)::

    x_c in {0, 1}                    candidate c chosen
    y_ij in [0, 1]                   consecutive pair (i at p, j at p+1) chosen
    sum_{c at p} x_c = 1             exactly one block per position
    sum_{c in set s} x_c <= 1        at most one block per equivalence set
    sum_j y_ij = x_i,  sum_i y_ij = x_j    (flow between positions p and p+1)

The flow constraints make the choice a path through a layered graph: with x
binary they force ``y_ij = x_i * x_j`` exactly (so ``y`` can stay continuous),
and they are LP-tight, unlike the McCormick form ``y >= x_i + x_j - 1``.
Stitch params/FLOPs (which depend on the pair), the stem (which depends on the
first block) and the head (which depends on the last) are then linear::

    params = base + sum_c x_c (params_c + stem_c + head_c) + sum_ij y_ij stitch_ij

and ``min <= params <= max``, ``min <= flops <= max`` are plain linear rows.

With states (:class:`~dery.solvers.StateTables`, ``assembly.resolution=
'chain'``: a block's FLOPs depend on the resolution the blocks before it
deliver) the layered graph's vertices are (candidate, state) pairs: the
position-0 candidates start in their given state, and the edge from ``(i, s)``
to ``j`` leads to the one state the stitch puts ``j`` in::

    z_cs in [0, 1]                   candidate c chosen and in state s (x_c when c has one state)
    sum_s z_cs = x_c
    sum_j y_isj = z_is,   sum_{(i, s) -> (j, t)} y_isj = z_jt      (flow between states)

Given binary x this is still exact: the one chosen vertex at position p sends
its unit of flow along its one edge into the chosen candidate at p+1, which
fixes that candidate's state, so z and y are integral too. Block FLOPs and the
head sit on z, stitch costs on y; the rows above are unchanged. Without states
every candidate has one state and this is the pair formulation.

Objective: the linear surrogate ``sum_c x_c score_c + sum_ij y_ij stitch_score_ij``.
The real objective, a whole-model training-free proxy (NASWOT...), is neither
linear nor additive over blocks, and evaluating it needs a built model; no
integer program can hold it. The surrogate (per-block scores given by the
assemble stage) is what an ILP can optimise *exactly* together with the exact
budget. To correct the surrogate's error the solver returns the top-M distinct
solutions (each later one found by adding a no-good cut
``sum_{c in previous} x_c <= K - 1``, so their surrogate values are
non-increasing) and re-ranks them with ``score_fn``, the whole-model proxy; the
best re-ranked one is the answer.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from typing import Dict, Hashable, List, Optional, Tuple

from dery.errors import ConfigError
from dery.registry import SOLVERS
from dery.utils import human

from .base import BaseSolver
from .problem import AssemblyProblem, ScoreFn, Solution, SolverResult

__all__ = ['ILPSolver', 'check_budget', 'extreme_costs']


def _pulp():
    try:
        import pulp
    except ImportError as e:  # pragma: no cover - pulp is a runtime requirement
        raise ImportError('ILPSolver needs pulp: pip install "pulp==3.3.2"') from e
    return pulp


def _fmt(n) -> str:
    n = int(n)
    return f'{n} ({human(n)})' if abs(n) >= 1000 else str(n)


def _bounds_text(op: str, params, flops) -> str:
    return ' and '.join(f'{k} must be {op} {_fmt(v)}'
                        for k, v in (('params', params), ('flops', flops)) if v is not None)


class _Model:
    """The pulp model of a problem (structure + optional budget rows)."""

    def __init__(self, problem: AssemblyProblem, objective: str = 'surrogate',
                 sense: str = 'max', budget: bool = True):
        pulp = _pulp()
        self.pulp = pulp
        self.problem = problem
        self.prob = pulp.LpProblem(
            'dery_assembly', pulp.LpMaximize if sense == 'max' else pulp.LpMinimize)
        P = problem
        self.x = {c.id: self._var(f'x_{k}', cat='Binary')
                  for k, c in enumerate(P.candidates)}
        lpSum = pulp.lpSum
        for p, cands in enumerate(P.by_position):
            self.prob += lpSum(self.x[c.id] for c in cands) == 1, f'one_at_{p}'
        sets = defaultdict(list)
        for c in P.candidates:
            if c.set is not None:
                sets[c.set].append(c.id)
        for k, (s, ids) in enumerate(sorted(sets.items(), key=lambda kv: str(kv[0]))):
            if len(ids) > 1:
                self.prob += lpSum(self.x[i] for i in ids) <= 1, f'set_{k}'
        index = {c.id: k for k, c in enumerate(P.candidates)}
        # y: one variable per edge of the layered graph; self.y maps (i, j) -> [vars] (all states)
        self.y: Dict[Tuple[Hashable, Hashable], object] = {}
        self.edges = []  # (i, state_i, j, state_j, var)
        if P.states is None:
            for k, pair in enumerate(P.pairs()):
                self.y[pair] = self._var(f'y_{k}', lowBound=0, upBound=1)
                self.edges.append((pair[0], None, pair[1], None, self.y[pair]))
            self.z = {(c.id, None): self.x[c.id] for c in P.candidates}
            for p in range(P.num_positions - 1):
                out, inn = defaultdict(list), defaultdict(list)
                for (i, j) in P.pairs(p):
                    out[i].append(self.y[(i, j)])
                    inn[j].append(self.y[(i, j)])
                for c in P.by_position[p]:
                    self.prob += lpSum(out[c.id]) == self.x[c.id], f'out_{index[c.id]}'
                for c in P.by_position[p + 1]:
                    self.prob += lpSum(inn[c.id]) == self.x[c.id], f'in_{index[c.id]}'
        else:
            self._state_flow(P, index)
        self.expr = {'params': self._cost_expr(0), 'flops': self._cost_expr(1)}
        if objective == 'surrogate':
            obj = lpSum(float(c.score) * self.x[c.id] for c in P.candidates)
            if P.stitch_score:
                obj += lpSum(float(v) * y for pair, v in P.stitch_score.items() if pair in self.y
                             for y in self._pair_vars(pair))
            self.prob += obj
        else:
            self.prob += self.expr[objective][0]
        if budget:
            for key in ('params', 'flops'):
                expr, scale, base = self.expr[key]
                lo, hi = P.constraints[key]
                if lo is not None:
                    self.prob += expr >= (lo - base) / scale, f'{key}_min'
                if hi is not None:
                    self.prob += expr <= (hi - base) / scale, f'{key}_max'
        self.num_cuts = 0

    def _var(self, name, **kw):
        return self.prob.add_variable(name, **kw)

    def _state_flow(self, P, index):
        """z (candidate, state) and y (state edges) with their flow rows (see the module doc)."""
        lpSum = self.pulp.lpSum
        self.z = {}
        for c in P.candidates:
            states = P.reachable.get(c.id, [])
            if len(states) == 1:
                self.z[(c.id, states[0])] = self.x[c.id]
            else:
                for t, st in enumerate(states):
                    self.z[(c.id, st)] = self._var(f'z_{index[c.id]}_{t}', lowBound=0, upBound=1)
            if len(states) != 1:  # none: never reachable, x_c = 0
                self.prob += lpSum(self.z[(c.id, st)] for st in states) == self.x[c.id], f'states_{index[c.id]}'
        k = 0
        for p in range(P.num_positions - 1):
            out, inn = defaultdict(list), defaultdict(list)
            for (i, j) in P.pairs(p):
                for st in P.reachable.get(i, []):
                    e = P.states.stitch[(i, st, j)]
                    if e is None:
                        continue
                    var = self._var(f'y_{k}', lowBound=0, upBound=1)
                    k += 1
                    self.y.setdefault((i, j), []).append(var)
                    self.edges.append((i, st, j, e[2], var))
                    out[(i, st)].append(var)
                    inn[(j, e[2])].append(var)
            for c in P.by_position[p]:
                for t, st in enumerate(P.reachable.get(c.id, [])):
                    self.prob += lpSum(out[(c.id, st)]) == self.z[(c.id, st)], f'out_{index[c.id]}_{t}'
            for c in P.by_position[p + 1]:
                for t, st in enumerate(P.reachable.get(c.id, [])):
                    self.prob += lpSum(inn[(c.id, st)]) == self.z[(c.id, st)], f'in_{index[c.id]}_{t}'

    def _pair_vars(self, pair):
        y = self.y[pair]
        return y if isinstance(y, list) else [y]

    def _cost_expr(self, k: int):
        """(scaled variable part, scale, base) of params (k=0) or flops (k=1)."""
        P = self.problem
        if P.states is not None:
            return self._state_cost_expr(k)
        coef = {}
        for c in P.candidates:
            v = (c.params, c.flops)[k]
            if c.position == 0:
                v += P.stem_cost(c.id)[k]
            if c.position == P.num_positions - 1:
                v += P.head_cost(c.id)[k]
            coef[c.id] = int(v)
        table = (P.stitch_params, P.stitch_flops)[k]
        big = max([abs(v) for v in coef.values()] + [abs(int(v)) for v in table.values()]
                  + [1])
        # keep coefficients O(1e4) so the solver's tolerances are tiny in counts;
        # every solution is re-checked in exact integer arithmetic anyway.
        scale = max(1.0, big / 1e4)
        lpSum = self.pulp.lpSum
        expr = lpSum((v / scale) * self.x[i] for i, v in coef.items() if v) + lpSum(
            (int(v) / scale) * self.y[pair] for pair, v in table.items()
            if v and pair in self.y)
        base = (P.base_params, P.base_flops)[k]
        return expr, scale, int(base)

    def _state_cost_expr(self, k: int):
        P, S = self.problem, self.problem.states
        terms = []  # (coefficient, variable)
        for c in P.by_position[0]:
            terms.append((int(P.stem_cost(c.id)[k]), self.x[c.id]))
        last = P.num_positions - 1
        for (cid, st), var in self.z.items():
            v = int(S.block[(cid, st)][k])
            if P.by_id[cid].position == last:
                v += int((S.head or {}).get((cid, st), (0, 0))[k])
            terms.append((v, var))
        for (i, st, j, _, var) in self.edges:
            terms.append((int(S.stitch[(i, st, j)][k]), var))
        big = max([abs(v) for v, _ in terms] + [1])
        scale = max(1.0, big / 1e4)
        expr = self.pulp.lpSum((v / scale) * var for v, var in terms if v)
        return expr, scale, int((P.base_params, P.base_flops)[k])

    def add_nogood(self, ids):
        self.num_cuts += 1
        self.prob += (self.pulp.lpSum(self.x[i] for i in ids) <= len(ids) - 1,
                      f'nogood_{self.num_cuts}')

    def solve(self, solver) -> Tuple[str, Optional[Tuple[Hashable, ...]]]:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            self.prob.solve(solver)
        pulp = self.pulp
        status = pulp.LpStatus.get(self.prob.status, str(self.prob.status))
        sol_status = getattr(self.prob, 'sol_status', None)
        if self.prob.status != pulp.LpStatusOptimal:
            if sol_status == getattr(pulp, 'LpSolutionIntegerFeasible', 2):
                status = 'time_limit'
            else:
                return status, None
        elif sol_status == getattr(pulp, 'LpSolutionIntegerFeasible', 2):
            status = 'time_limit'
        else:
            status = 'optimal'
        ids = []
        for cands in self.problem.by_position:
            chosen = [c.id for c in cands if (self.x[c.id].varValue or 0) > 0.5]
            if len(chosen) != 1:
                return 'Undefined', None
            ids.append(chosen[0])
        return status, tuple(ids)


def _make_solver(backend: str, time_limit: Optional[float], threads: Optional[int]):
    pulp = _pulp()
    backend = str(backend).lower()
    # CBC's ``-threads`` option, even ``-threads 1``, starts a thread pool that
    # sometimes waits 10 s to start ("Thread 0 ... waiting to start 10.000");
    # without it CBC runs single-threaded and deterministic.
    threads = int(threads) if threads is not None and int(threads) > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        if backend == 'cbc':
            return pulp.PULP_CBC_CMD(msg=False, threads=threads, timeLimit=time_limit,
                                     gapRel=0.0, gapAbs=0.0)
        if backend == 'highs':
            if not pulp.HiGHS().available():
                raise ConfigError(
                    "ILPSolver backend 'highs' needs highspy: pip install highspy, "
                    "or use backend='cbc' (bundled with pulp)")
            kw = dict(msg=False, threads=threads or 1, gapRel=0.0, gapAbs=0.0)
            if time_limit is not None:
                kw['timeLimit'] = time_limit
            return pulp.HiGHS(**kw)
    raise ConfigError(f"ILPSolver backend must be 'cbc' or 'highs', got {backend!r}")


def extreme_costs(problem: AssemblyProblem, backend: str = 'cbc') -> dict:
    """Smallest and largest achievable params and FLOPs, ignoring the budget.

    Each is found by an exact ILP over the structure (one per position, sets,
    forbidden pairs). Returns ``dict(min_params=(params, flops, ids),
    min_flops=..., max_params=..., max_flops=...)``.

    Raises:
        ValueError: when no assembly exists even without a budget.
    """
    solver = _make_solver(backend, None, None)
    out = {}
    for key, (obj, sense) in dict(min_params=('params', 'min'), min_flops=('flops', 'min'),
                                   max_params=('params', 'max'),
                                   max_flops=('flops', 'max')).items():
        status, ids = _Model(problem, objective=obj, sense=sense, budget=False).solve(solver)
        if ids is None:
            raise ConfigError(
                'no valid assembly exists even without a budget: the equivalence-set '
                '(at most one block per set) and forbidden-pair constraints leave no '
                'choice; check the partition sets and forbidden_pairs')
        out[key] = (*problem.cost(ids), ids)
    return out


def check_budget(problem: AssemblyProblem, backend: str = 'cbc') -> None:
    """Raise a ``ValueError`` explaining why the budget admits no assembly.

    Call it when a solver found nothing feasible; it returns ``None`` silently
    when a feasible assembly does exist.
    """
    ext = extreme_costs(problem, backend)
    (p_lo, p_hi), (f_lo, f_hi) = problem.constraints['params'], problem.constraints['flops']
    a_p, a_f, _ = ext['min_params']
    b_p, b_f, _ = ext['min_flops']
    too_small = []
    if p_hi is not None and a_p > p_hi:
        too_small.append(f'params >= {_fmt(a_p)}')
    if f_hi is not None and b_f > f_hi:
        too_small.append(f'flops >= {_fmt(b_f)}')
    if too_small:
        bounds = _bounds_text('<=', p_hi, f_hi)
        raise ConfigError(
            f'budget infeasible: {bounds}, but the '
            f'smallest achievable model has {_fmt(a_p)} params and {_fmt(b_f)} FLOPs '
            f'(each minimised separately, stem, stitches and head included; the '
            f'smallest-params assembly has {_fmt(a_f)} FLOPs, the smallest-FLOPs one '
            f'{_fmt(b_p)} params). Raise the max bounds to at least '
            f'{" and ".join(too_small)}.')
    mp, mf = ext['max_params'][0], ext['max_flops'][1]
    too_big = []
    if p_lo is not None and p_lo > mp:
        too_big.append(f'params <= {_fmt(mp)}')
    if f_lo is not None and f_lo > mf:
        too_big.append(f'flops <= {_fmt(mf)}')
    if too_big:
        bounds = _bounds_text('>=', p_lo, f_lo)
        raise ConfigError(
            f'budget infeasible: {bounds}, but the '
            f'largest achievable model has {_fmt(mp)} params and {_fmt(mf)} FLOPs. Lower '
            f'the min bounds to at most {" and ".join(too_big)}.')
    if any(problem.is_feasible(ext[k][2]) for k in ext):
        return
    # each bound alone is reachable; the combination is not (or rarely, it is and
    # the caller's search missed it: verify with the exact program).
    status, ids = _Model(problem, objective='params', sense='min').solve(
        _make_solver(backend, None, None))
    if ids is not None and problem.is_feasible(ids):
        return
    raise ConfigError(
        f'budget infeasible: no assembly has params in [{p_lo}, {p_hi}] and flops in '
        f'[{f_lo}, {f_hi}] at once; the smallest-params assembly has {_fmt(a_p)} params '
        f'and {_fmt(a_f)} FLOPs, the smallest-FLOPs one {_fmt(b_p)} params and '
        f'{_fmt(b_f)} FLOPs. Widen the bounds, e.g. raise the max flops to at least '
        f'{a_f} or the max params to at least {b_p}.')


@SOLVERS.register_module()
class ILPSolver(BaseSolver):
    """Exact 0-1 integer program, top-M by no-good cuts, re-ranked by the proxy.

    See the module docstring for the formulation and why a linear surrogate is
    optimised. ``solve`` returns up to ``top_m`` distinct feasible assemblies in
    non-increasing surrogate order (``assemblies``); with ``score_fn`` each is
    scored by the whole-model proxy and ``ranked``/``best`` follow the proxy.

    Args:
        top_m: number of distinct solutions to enumerate (default 10).
        backend: ``'cbc'`` (bundled with pulp, default) or ``'highs'`` (needs
            highspy).
        time_limit: seconds per ILP solve (None: no limit). A solve stopped by
            the limit gives status ``'time_limit'``.
        threads: solver threads; None/1 (default) runs single-threaded and
            deterministic (CBC's thread pool is not used at all: with it CBC can
            stall for 10 s per solve).
    """

    def __init__(self, top_m: int = 10, backend: str = 'cbc',
                 time_limit: Optional[float] = None, threads: Optional[int] = None):
        if int(top_m) < 1:
            raise ConfigError(f'ILPSolver top_m must be >= 1, got {top_m}')
        self.top_m = int(top_m)
        self.backend = backend
        self.time_limit = time_limit
        self.threads = threads
        _make_solver(backend, time_limit, self.threads)  # fail early on a bad backend

    def solve(self, problem: AssemblyProblem,
              score_fn: Optional[ScoreFn] = None) -> SolverResult:
        """Enumerate the top-M surrogate solutions, then re-rank with ``score_fn``."""
        t0 = time.perf_counter()
        problem = self._check_problem(problem)
        solver = _make_solver(self.backend, self.time_limit, self.threads)
        model = _Model(problem)
        found: List[Solution] = []
        statuses, solve_seconds = [], []
        rejected = 0
        while len(found) < self.top_m:
            ts = time.perf_counter()
            status, ids = model.solve(solver)
            solve_seconds.append(time.perf_counter() - ts)
            if ids is None:
                break
            model.add_nogood(ids)
            if not problem.is_feasible(ids):
                # a tolerance artefact of the float rows: exact check says no.
                rejected += 1
                if rejected > 100:
                    break
                continue
            statuses.append(status)
            found.append(problem.make_solution(ids))
        if not found:
            check_budget(problem, self.backend)
            raise RuntimeError(
                f'ILPSolver ({self.backend}) found no solution although one exists '
                f'(last status {status}); raise time_limit or try backend="highs"')
        ilp_seconds = time.perf_counter() - t0
        evals = self._score_all(found, score_fn)
        status = 'time_limit' if 'time_limit' in statuses else 'optimal'
        info = dict(backend=self.backend, top_m=self.top_m, num_found=len(found),
                    ilp_seconds=ilp_seconds, solve_seconds=solve_seconds,
                    num_variables=len(model.x) + len(model.edges)
                    + sum(1 for (c, _), v in model.z.items() if v is not model.x[c]),
                    num_constraints=model.prob.numConstraints())
        self._logger().info(
            f'ILPSolver: {len(found)} assemblies in {ilp_seconds:.2f}s '
            f'({len(model.x)} candidates, {len(model.edges)} pairs'
            f'{"" if problem.states is None else " of states"}), {evals} proxy evals')
        return self._result('ILPSolver', found, status, t0, evals, info)
