"""The reassembly problem handed to the solvers, and what they hand back.

The assemble stage fills an :class:`AssemblyProblem` from ``partition.json`` and
measured tables (block params/FLOPs, stitch params/FLOPs, stem and head costs,
per-block scores) and passes it to a solver from ``SOLVERS``. Every solver
returns a :class:`SolverResult` whose assemblies are all feasible.

Cost model (all counts are plain integers, as measured on built modules)::

    params(a) = base_params
              + sum_p cand[a_p].params               (blocks)
              + sum_p stitch_params[(a_p, a_{p+1})]  (stitches, p = 0..K-2)
              + first_stem[a_0][0]                   (stem, when it depends on block 0)
              + last_head[a_{K-1}][0]                (head, when it depends on the last block)

and the same for FLOPs with index 1. The surrogate objective maximised by the
ILP is ``sum_p cand[a_p].score + sum_p stitch_score[(a_p, a_{p+1})]``.

When costs depend on more than the pair (``assembly.resolution='chain'``: a
block runs at the resolution the blocks before it deliver, so its FLOPs, the
stitch into it and the head depend on the whole prefix), the problem carries
:class:`StateTables`: each chosen block is in a *state* (its input
resolution), the first block's state is given, and every stitch says the
state of the block after it. Then::

    s_0 = first[a_0]
    params(a) = base + stem(a_0)
              + sum_p block[(a_p, s_p)]                        (blocks, at their states)
              + sum_p stitch[(a_p, s_p, a_{p+1})]  -> s_{p+1}    (stitches, and the next state)
              + head[(a_{K-1}, s_{K-1})]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from dery.errors import ConfigError

__all__ = ['Candidate', 'AssemblyProblem', 'StateTables', 'Solution', 'SolverResult',
           'normalize_constraints']

Bounds = Tuple[Optional[int], Optional[int]]


@dataclass
class Candidate:
    """One block allowed at one stage position.

    Args:
        id: unique hashable id (an ``int`` or ``str``) used in the pairwise tables.
        model: zoo name of the source model.
        start: first node of the block (name or index).
        end: last node of the block (name or index).
        set: equivalence set of the block (``None``: no set constraint).
        position: the stage position 0..K-1 this candidate is allowed at. A block
            allowed at several positions appears as several candidates.
        params: parameters of the block alone.
        flops: FLOPs of the block alone (on the target input size).
        score: the per-block surrogate score (higher is better), e.g. a
            normalised proxy score; only used by the ILP's linear objective.
    """
    id: Hashable
    model: str
    start: Any
    end: Any
    set: Optional[int]
    position: int
    params: int
    flops: int
    score: float = 0.0

    def to_dict(self) -> dict:
        """The JSON-friendly fields of the candidate."""
        return dict(id=self.id, model=self.model, start=self.start, end=self.end,
                    set=self.set, position=self.position, params=int(self.params),
                    flops=int(self.flops), score=float(self.score))


def normalize_constraints(constraints: Optional[dict]) -> Dict[str, Bounds]:
    """Check and normalise ``dict(params=(min, max), flops=(min, max))``.

    Either bound may be ``None``; a missing key means unbounded. A single number
    is read as a max bound.

    Raises:
        ValueError: unknown key, malformed or negative bounds, or min > max.
    """
    out: Dict[str, Bounds] = {'params': (None, None), 'flops': (None, None)}
    for key, value in (constraints or {}).items():
        if key not in out:
            raise ConfigError(
                f'constraints: unknown key {key!r}; use constraints = '
                'dict(params=(min, max), flops=(min, max)) with plain counts')
        if value is None:
            continue
        if isinstance(value, (int, float)):
            value = (None, value)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ConfigError(
                f'constraints.{key} must be a (min, max) pair of counts (either may '
                f'be None), got {value!r}')
        lo, hi = value
        for name, v in (('min', lo), ('max', hi)):
            if v is not None and (not isinstance(v, (int, float)) or v < 0
                                  or (isinstance(v, float) and not math.isfinite(v))):
                raise ConfigError(
                    f'constraints.{key} {name} bound must be a non-negative count or '
                    f'None, got {v!r}')
        lo = None if lo is None else int(math.ceil(lo))
        hi = None if hi is None else int(math.floor(hi))
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(
                f'constraints.{key}: min ({lo}) is larger than max ({hi}); '
                f'fix the bounds so that min <= max')
        out[key] = (lo, hi)
    return out


@dataclass
class StateTables:
    """Costs that depend on the state a block is in (its input resolution under ``'chain'``).

    Args:
        first: ``{id: state}`` of every position-0 candidate.
        block: ``{(id, state): (params, flops)}`` of the block in that state.
        stitch: ``{(id_i, state_i, id_j): (params, flops, state_j)}``: the stitch
            from ``i`` (in ``state_i``) into the next block ``j`` and the state
            ``j`` is then in; ``None``: ``j`` cannot follow ``i`` in that state
            (e.g. it cannot run at that resolution).
        head: ``{(id, state): (params, flops)}`` of the head after a
            last-position block in that state.

    States are any hashable values (resolutions ``(H, W)``). Only the states
    reachable from ``first`` need entries.
    """
    first: Dict[Hashable, Hashable]
    block: Dict[Tuple[Hashable, Hashable], Tuple[int, int]]
    stitch: Dict[Tuple[Hashable, Hashable, Hashable], Optional[Tuple[int, int, Hashable]]]
    head: Dict[Tuple[Hashable, Hashable], Tuple[int, int]] = field(default_factory=dict)


@dataclass
class AssemblyProblem:
    """Choose one candidate per position, at most one per set, within a budget.

    Args:
        num_positions: K, the number of stage positions.
        candidates: all candidates; each is allowed at its ``position`` only.
        stitch_params: ``{(id_i, id_j): params}`` of the stitch between candidate
            ``i`` at position p and ``j`` at p+1. Empty: no stitch costs. When not
            empty it must hold every allowed consecutive pair (missing pairs are an
            error, so that a forgotten measurement never counts as free); list
            pairs that cannot be stitched in ``forbidden_pairs``.
        stitch_flops: the same for FLOPs.
        base_params: fixed params of the built model (stem/head when they do not
            depend on the chosen blocks, anything else fixed).
        base_flops: fixed FLOPs.
        first_stem: optional ``{id: (params, flops)}`` for position-0 candidates,
            when the stem depends on the first block (default stem = the stem of
            the first block's source model). Missing ids count as (0, 0).
        last_head: optional ``{id: (params, flops)}`` for last-position candidates,
            when the head depends on the last block (its channel count).
        stitch_score: optional ``{(id_i, id_j): float}`` pairwise surrogate term
            (e.g. a penalty for stitching dissimilar blocks); missing pairs are 0.
        forbidden_pairs: consecutive pairs that may not be chosen together.
        constraints: ``dict(params=(min, max), flops=(min, max))`` in plain counts;
            either bound may be None.
        states: optional :class:`StateTables`; then block, stitch and head costs
            come from it (``stitch_params``/``stitch_flops``/``last_head`` must be
            empty; ``first_stem`` and ``base_*`` still apply, the candidates'
            own ``params``/``flops`` are for display).
    """
    num_positions: int
    candidates: List[Candidate]
    stitch_params: Dict[Tuple[Hashable, Hashable], int] = field(default_factory=dict)
    stitch_flops: Dict[Tuple[Hashable, Hashable], int] = field(default_factory=dict)
    base_params: int = 0
    base_flops: int = 0
    first_stem: Optional[Dict[Hashable, Tuple[int, int]]] = None
    last_head: Optional[Dict[Hashable, Tuple[int, int]]] = None
    stitch_score: Optional[Dict[Tuple[Hashable, Hashable], float]] = None
    forbidden_pairs: Sequence[Tuple[Hashable, Hashable]] = ()
    constraints: Optional[dict] = None
    states: Optional[StateTables] = None

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check the tables; raise ``ValueError`` naming the first problem found."""
        K = self.num_positions
        if not isinstance(K, int) or K < 1:
            raise ConfigError(f'num_positions must be a positive int, got {K!r}')
        self.by_id: Dict[Hashable, Candidate] = {}
        self.by_position: List[List[Candidate]] = [[] for _ in range(K)]
        for c in self.candidates:
            if c.id in self.by_id:
                raise ConfigError(f'candidate id {c.id!r} appears twice; ids must be unique')
            if not (isinstance(c.position, int) and 0 <= c.position < K):
                raise ConfigError(
                    f'candidate {c.id!r} has position {c.position!r}, outside 0..{K - 1}')
            if c.params < 0 or c.flops < 0:
                raise ConfigError(f'candidate {c.id!r} has negative params or flops')
            if not math.isfinite(float(c.score)):
                raise ConfigError(
                    f'candidate {c.id!r} has a non-finite score {c.score!r}; '
                    'fix the per-block scores')
            self.by_id[c.id] = c
            self.by_position[c.position].append(c)
        for p, cands in enumerate(self.by_position):
            if not cands:
                raise ConfigError(
                    f'position {p} has no candidate; every stage position needs at '
                    'least one allowed block')
        self.constraints = normalize_constraints(self.constraints)
        self._forbidden = set(tuple(x) for x in self.forbidden_pairs)
        for name in ('stitch_params', 'stitch_flops'):
            table = getattr(self, name) or {}
            setattr(self, name, table)
            for (i, j) in table:
                self._check_pair(name, i, j)
            if table:
                for (i, j) in self.pairs():
                    if (i, j) not in table:
                        raise ConfigError(
                            f'{name} has no entry for the consecutive pair ({i!r}, {j!r}); '
                            'give every allowed pair (0 when no stitch is needed) or list '
                            'the pair in forbidden_pairs')
        for (i, j) in (self.stitch_score or {}):
            self._check_pair('stitch_score', i, j)
        for name, pos in (('first_stem', 0), ('last_head', K - 1)):
            for cid, cost in (getattr(self, name) or {}).items():
                if cid not in self.by_id or self.by_id[cid].position != pos:
                    raise ConfigError(
                        f'{name} has an entry for {cid!r}, which is not a candidate at '
                        f'position {pos}')
                if len(tuple(cost)) != 2:
                    raise ConfigError(f'{name}[{cid!r}] must be a (params, flops) pair')
        self._validate_states()

    def _validate_states(self):
        """Reachable states per candidate (``self.reachable``), every one of them costed."""
        S, K = self.states, self.num_positions
        if S is None:
            self.reachable = None
            return
        if self.stitch_params or self.stitch_flops or self.last_head:
            raise ConfigError('a problem with states takes its stitch and head costs from states.stitch and '
                              'states.head: leave stitch_params, stitch_flops and last_head empty')
        reach = {}
        for c in self.by_position[0]:
            if c.id not in S.first:
                raise ConfigError(f'states.first has no state for the position-0 candidate {c.id!r}')
            reach[c.id] = [S.first[c.id]]
        for p in range(K):
            for c in self.by_position[p]:
                for st in reach.get(c.id, []):
                    if (c.id, st) not in S.block:
                        raise ConfigError(f'states.block has no cost for {c.id!r} in state {st!r}')
                    if p == K - 1 and S.head and (c.id, st) not in S.head:
                        raise ConfigError(f'states.head has no cost for {c.id!r} in state {st!r}')
            if p == K - 1:
                break
            for (i, j) in self.pairs(p):
                for st in reach.get(i, []):
                    if (i, st, j) not in S.stitch:
                        raise ConfigError(f'states.stitch has no entry for {i!r} in state {st!r} -> {j!r}; give '
                                          'every reachable one (None: not allowed)')
                    e = S.stitch[(i, st, j)]
                    if e is None:
                        continue
                    if len(tuple(e)) != 3:
                        raise ConfigError(f'states.stitch[{(i, st, j)!r}] must be (params, flops, next state)')
                    nxt = reach.setdefault(j, [])
                    if e[2] not in nxt:
                        nxt.append(e[2])
        self.reachable = reach

    def _check_pair(self, name, i, j):
        if i not in self.by_id or j not in self.by_id:
            raise ConfigError(f'{name} names unknown candidate ids ({i!r}, {j!r})')
        if self.by_id[j].position != self.by_id[i].position + 1:
            raise ConfigError(
                f'{name} pair ({i!r}, {j!r}) is not consecutive: positions '
                f'{self.by_id[i].position} and {self.by_id[j].position}')

    # ------------------------------------------------------------------ helpers
    def pairs(self, p: Optional[int] = None):
        """Allowed consecutive pairs (between p and p+1, or all when p is None)."""
        ps = range(self.num_positions - 1) if p is None else [p]
        for q in ps:
            for a in self.by_position[q]:
                for b in self.by_position[q + 1]:
                    if (a.id, b.id) not in self._forbidden:
                        yield (a.id, b.id)

    def is_forbidden(self, i, j) -> bool:
        """Whether the consecutive pair (i, j) may not be chosen together."""
        return (i, j) in self._forbidden

    def stem_cost(self, cid) -> Tuple[int, int]:
        """(params, flops) of the stem when ``cid`` is the first block."""
        return tuple(int(v) for v in (self.first_stem or {}).get(cid, (0, 0)))

    def head_cost(self, cid) -> Tuple[int, int]:
        """(params, flops) of the head when ``cid`` is the last block."""
        return tuple(int(v) for v in (self.last_head or {}).get(cid, (0, 0)))

    def structure_error(self, ids: Sequence[Hashable]) -> Optional[str]:
        """Why ``ids`` is not a valid assembly (ignoring the budget), or None."""
        if len(ids) != self.num_positions:
            return f'{len(ids)} blocks for {self.num_positions} positions'
        sets = set()
        for p, cid in enumerate(ids):
            c = self.by_id.get(cid)
            if c is None:
                return f'unknown candidate {cid!r}'
            if c.position != p:
                return f'candidate {cid!r} is not allowed at position {p}'
            if c.set is not None:
                if c.set in sets:
                    return f'set {c.set} is used twice'
                sets.add(c.set)
        for p in range(self.num_positions - 1):
            if (ids[p], ids[p + 1]) in self._forbidden:
                return f'pair ({ids[p]!r}, {ids[p + 1]!r}) is forbidden'
        if self.states is not None:
            st = self.states.first[ids[0]]
            for p in range(self.num_positions - 1):
                e = self.states.stitch.get((ids[p], st, ids[p + 1]))
                if e is None:
                    return f'{ids[p + 1]!r} cannot follow {ids[p]!r} in state {st!r}'
                st = e[2]
        return None

    def walk(self, ids: Sequence[Hashable]) -> List[Hashable]:
        """The state of each block of ``ids`` (``[None] * K`` without states)."""
        if self.states is None:
            return [None] * len(ids)
        st, out = self.states.first[ids[0]], []
        for p, cid in enumerate(ids):
            out.append(st)
            if p + 1 < len(ids):
                st = self.states.stitch[(cid, st, ids[p + 1])][2]
        return out

    def cost(self, ids: Sequence[Hashable]) -> Tuple[int, int]:
        """Exact (params, flops) of the assembly ``ids`` (integer arithmetic)."""
        if self.states is not None:
            return self._state_cost(ids)
        params, flops = int(self.base_params), int(self.base_flops)
        for cid in ids:
            c = self.by_id[cid]
            params += int(c.params)
            flops += int(c.flops)
        for a, b in zip(ids[:-1], ids[1:]):
            params += int(self.stitch_params.get((a, b), 0))
            flops += int(self.stitch_flops.get((a, b), 0))
        sp, sf = self.stem_cost(ids[0])
        hp, hf = self.head_cost(ids[-1])
        return params + sp + hp, flops + sf + hf

    def _state_cost(self, ids):
        S = self.states
        sp, sf = self.stem_cost(ids[0])
        params, flops = int(self.base_params) + sp, int(self.base_flops) + sf
        st = S.first[ids[0]]
        for p, cid in enumerate(ids):
            bp, bf = S.block[(cid, st)]
            params, flops = params + int(bp), flops + int(bf)
            if p + 1 < len(ids):
                e = S.stitch[(cid, st, ids[p + 1])]
                params, flops, st = params + int(e[0]), flops + int(e[1]), e[2]
        hp, hf = (S.head or {}).get((ids[-1], st), (0, 0))
        return params + int(hp), flops + int(hf)

    def surrogate(self, ids: Sequence[Hashable]) -> float:
        """The linear surrogate objective of ``ids``."""
        s = sum(float(self.by_id[cid].score) for cid in ids)
        if self.stitch_score:
            s += sum(float(self.stitch_score.get((a, b), 0.0))
                     for a, b in zip(ids[:-1], ids[1:]))
        return s

    def within_budget(self, params: int, flops: int) -> bool:
        """Whether (params, flops) satisfies the min and max bounds."""
        for value, (lo, hi) in ((params, self.constraints['params']),
                                (flops, self.constraints['flops'])):
            if lo is not None and value < lo:
                return False
            if hi is not None and value > hi:
                return False
        return True

    def is_feasible(self, ids: Sequence[Hashable]) -> bool:
        """Valid structure and within the budget."""
        if self.structure_error(ids) is not None:
            return False
        return self.within_budget(*self.cost(ids))

    def make_solution(self, ids: Sequence[Hashable],
                      proxy_score: Optional[float] = None) -> 'Solution':
        """A :class:`Solution` with exact costs and surrogate for ``ids``."""
        ids = tuple(ids)
        params, flops = self.cost(ids)
        return Solution(ids, params, flops, self.surrogate(ids), proxy_score)

    def num_assemblies(self) -> int:
        """Size of the unconstrained product space (one candidate per position)."""
        n = 1
        for cands in self.by_position:
            n *= len(cands)
        return n


@dataclass
class Solution:
    """One chosen assembly: candidate ids in stage order, exact costs and scores."""
    candidate_ids: Tuple[Hashable, ...]
    params: int
    flops: int
    surrogate: float
    proxy_score: Optional[float] = None

    def to_dict(self, problem: Optional[AssemblyProblem] = None) -> dict:
        """JSON-friendly form; with ``problem``, also the blocks in stage order."""
        d = dict(candidate_ids=list(self.candidate_ids), params=int(self.params),
                 flops=int(self.flops), surrogate=float(self.surrogate),
                 proxy_score=None if self.proxy_score is None else float(self.proxy_score))
        if problem is not None:
            d['blocks'] = [
                dict(model=c.model, start=c.start, end=c.end, set=c.set, position=c.position)
                for c in (problem.by_id[i] for i in self.candidate_ids)]
        return d


def rank_key(a: Solution):
    """Sort key: proxy score (when known) then surrogate, both descending."""
    proxy = a.proxy_score if a.proxy_score is not None else -math.inf
    return (-proxy, -a.surrogate, tuple(str(i) for i in a.candidate_ids))


@dataclass
class SolverResult:
    """What a solver returns.

    Attributes:
        assemblies: the distinct feasible assemblies the solver produced, in its
            own order (ILP: non-increasing surrogate; random search: draw order;
            greedy swap: visit order).
        best: ``ranked[0]``, the answer.
        status: ``'optimal'`` (ILP/exhaustive: every returned solution proven
            optimal for the surrogate under the cuts), ``'feasible'`` (search
            heuristics), or ``'time_limit'``.
        seconds: wall time of ``solve`` (including proxy evaluations).
        num_proxy_evals: calls made to ``score_fn``.
        ranked: ``assemblies`` sorted by proxy score (when ``score_fn`` was given)
            then surrogate, best first.
        solver: the solver's type name.
        info: solver-specific extras (e.g. ILP solve seconds, draws, rates).
    """
    assemblies: List[Solution]
    best: Solution
    status: str
    seconds: float
    num_proxy_evals: int
    ranked: List[Solution]
    solver: str = ''
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self, problem: Optional[AssemblyProblem] = None) -> dict:
        """JSON-friendly form (for ``assembly.json``)."""
        return dict(solver=self.solver, status=self.status, seconds=float(self.seconds),
                    num_proxy_evals=int(self.num_proxy_evals),
                    best=self.best.to_dict(problem),
                    ranked=[a.to_dict(problem) for a in self.ranked],
                    info=dict(self.info))


ScoreFn = Callable[[Tuple[Hashable, ...]], float]
