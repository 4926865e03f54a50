"""Baseline partitioners for ablations: equal node counts and random cuts."""
import numbers

import numpy as np

from dery.errors import ConfigError
from dery.registry import PARTITIONERS
from .base import BasePartitioner
from .kernels import pick_anchors, set_layout
from .problem import prepare, sample_starts
from .record import Partition

__all__ = ['UniformPartitioner', 'RandomPartitioner']


class _FixedCutPartitioner(BasePartitioner):
    """Cuts chosen without looking at similarity; block ``k`` of every model is in set ``k``.

    With ``similarity`` given, each set's anchor is the best member (as in the cover-set
    partitioner) and the objective is reported; without it (``similarity=None``) the
    anchor is the first model's member and ``objective`` is ``None``.
    """

    requires_similarity = False

    def _starts(self, problem):
        raise NotImplementedError

    def _extra(self):
        return {}

    def partition(self, nodes, similarity=None, node_params=None, similarity_type=None):
        """Same signature and output format as :meth:`CoverSetPartitioner.partition`."""
        problem = prepare(nodes, similarity, self.num_sets, getattr(self, 'eps', 0.0),
                          getattr(self, 'size_limit', 'nodes'), node_params,
                          self.input_similarity, self.input_feature_similarity,
                          require_similarity=False)
        if not getattr(self, '_use_limit', True):
            problem.limits = [None] * problem.M
        starts = self._starts(problem)                                  # [M, K]
        K = problem.K
        blockset = np.broadcast_to(np.arange(K), starts.shape).copy()
        anchors = None
        if problem.has_similarity:
            _, _, e_ts, s_ts = set_layout(starts[None], blockset[None], problem.sizes)
            anchors = pick_anchors(problem, e_ts, s_ts)[0][0]
        meta = self._meta(similarity_type, assignment='stage', **self._extra())
        return Partition.from_state(problem, starts, blockset, anchors, meta, renumber=False)


@PARTITIONERS.register_module()
class UniformPartitioner(_FixedCutPartitioner):
    """Cut every model into ``num_sets`` blocks of equal node counts (the first
    ``N mod K`` blocks get one node more); block ``k`` goes to set ``k``. No size limit
    (``size_limits`` in the output are null)."""

    _use_limit = False

    def __init__(self, num_sets=4, seed=0, **kwargs):
        super().__init__(num_sets=num_sets, seed=seed, **kwargs)

    def _starts(self, problem):
        K = problem.K
        out = []
        for n in problem.sizes:
            sizes = [n // K + (1 if k < n % K else 0) for k in range(K)]
            out.append(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        return np.array(out, dtype=np.int64)


@PARTITIONERS.register_module()
class RandomPartitioner(_FixedCutPartitioner):
    """Random cuts (seeded), drawn uniformly among the partitions that respect the same
    size limit as :class:`CoverSetPartitioner` (``eps``, ``size_limit``); block ``k`` goes
    to set ``k``. ``eps=None`` lifts the limit (any ``K`` non-empty blocks)."""

    def __init__(self, num_sets=4, eps=0.2, seed=0, size_limit='nodes', **kwargs):
        super().__init__(num_sets=num_sets, seed=seed, **kwargs)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ConfigError(f'seed must be an integer, got {seed!r}')
        self._use_limit = eps is not None
        self.eps = float(eps) if eps is not None else 1e9
        self.size_limit = size_limit if eps is not None else 'nodes'

    def _extra(self):
        return {'eps': self.eps if self._use_limit else None, 'size_limit': self.size_limit}

    def _starts(self, problem):
        rng = np.random.default_rng(self.seed)
        return np.stack([sample_starts(f, problem.K, 1, rng)[0] for f in problem.feasible])
