"""Draw the assemblies a calibration fine-tunes: the solver's ranked candidates first, then seeded
random feasible ones. Works on any problem with ``by_position``, ``is_feasible(ids)``
(:class:`dery.solvers.AssemblyProblem`)."""
import itertools
import math

import numpy as np

from dery.errors import ConfigError

__all__ = ['feasible_assemblies', 'sample_assemblies']

#: enumerate the product space up to this size, else sample by rejection
ENUMERATE_LIMIT = 200_000


def feasible_assemblies(problem, limit=None):
    """Every feasible assembly (candidate-id tuples in product order), or None when the product space
    is larger than ``limit`` (default :data:`ENUMERATE_LIMIT`)."""
    sizes = [len(c) for c in problem.by_position]
    if math.prod(sizes) > (ENUMERATE_LIMIT if limit is None else limit):
        return None
    ids = [[c.id for c in cands] for cands in problem.by_position]
    return [t for t in itertools.product(*ids) if problem.is_feasible(t)]


def sample_assemblies(problem, num, seed=0, include=(), max_draws=200_000):
    """``num`` distinct feasible assemblies: ``include`` (in order; infeasible ones are an error), then
    uniformly drawn feasible ones (seeded). Returns ``[(ids, source)]``, ``source`` 'include' or
    'random'; fewer than ``num`` when fewer exist."""
    out, seen = [], set()
    for ids in include:
        ids = tuple(ids)
        if ids in seen:
            continue
        if not problem.is_feasible(ids):
            raise ConfigError(f'calibration: the assembly {list(ids)} is not feasible under the config\'s '
                              'budget (it was ranked under another budget?)')
        seen.add(ids)
        out.append((ids, 'include'))
        if len(out) >= num:
            return out
    rng = np.random.default_rng(seed)
    pool = feasible_assemblies(problem)
    if pool is not None:
        rest = [t for t in pool if t not in seen]
        for k in rng.permutation(len(rest))[:max(0, num - len(out))]:
            out.append((rest[int(k)], 'random'))
        return out
    ids = [[c.id for c in cands] for cands in problem.by_position]
    for _ in range(int(max_draws)):
        if len(out) >= num:
            break
        t = tuple(col[int(rng.integers(len(col)))] for col in ids)
        if t not in seen and problem.is_feasible(t):
            seen.add(t)
            out.append((t, 'random'))
    return out
