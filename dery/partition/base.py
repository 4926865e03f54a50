"""``BasePartitioner`` (the interface every partitioner implements) and ``evaluate_partition``.

A partitioner's ``partition(nodes, similarity, ...)`` returns a
:class:`~dery.partition.Partition` (the ``partition.json`` record,
:mod:`dery.partition.record`); the problem it solves is described in
:mod:`dery.partition.problem`.
"""
import numpy as np

from .kernels import objective_of, pick_anchors, set_layout
from .problem import check_num_sets, prepare
from .record import Partition

__all__ = ['BasePartitioner', 'evaluate_partition']


def evaluate_partition(result, similarity, input_similarity=1.0,
                       input_feature_similarity=0.0, repick_anchors=False):
    """Objective of a partition (a :class:`Partition` or its JSON dict) under ``similarity``.

    See :mod:`dery.partition.problem` for the objective. With ``repick_anchors``
    every set's anchor is replaced by the best member first (useful to score a
    partition made without similarity, e.g. the baselines).
    """
    part = Partition.from_json(result)
    problem = prepare(part.nodes, similarity, part.num_sets, eps=0.0, size_limit='nodes',
                      input_similarity=input_similarity,
                      input_feature_similarity=input_feature_similarity)
    index = {name: m for m, name in enumerate(problem.names)}
    starts = [[b.start_index for b in mb.blocks] for mb in part.models.values()]
    blockset = [[b.set for b in mb.blocks] for mb in part.models.values()]
    if repick_anchors:
        st = np.asarray(starts)[None]
        bs = np.asarray(blockset)[None]
        _, _, e_ts, s_ts = set_layout(st, bs, problem.sizes)
        anchors, _, _ = pick_anchors(problem, e_ts, s_ts)
        anchors = [int(a) for a in anchors[0]]
    else:
        anchors = [index[s.anchor[0]] for s in part.sets]
    return objective_of(problem, starts, blockset, anchors)[0]


class BasePartitioner:
    """Base class: ``partition(nodes, similarity, ...)`` -> :class:`Partition`.

    Args:
        num_sets (int): ``K``, blocks per model and number of equivalence sets.
        seed (int): random seed (recorded in the output).
        similarity_type (str): name of the similarity metric, stored under
            ``'similarity'`` in the output (``partition()`` may override it).
        input_similarity (float): similarity of two models' raw inputs (same images): 1.0.
        input_feature_similarity (float): similarity of a raw input to a feature map: 0.0.
    """

    requires_similarity = True

    def __init__(self, num_sets=4, seed=0, similarity_type='unknown', input_similarity=1.0,
                 input_feature_similarity=0.0):
        self.num_sets = check_num_sets(num_sets)
        self.seed = seed
        self.similarity_type = similarity_type
        self.input_similarity = float(input_similarity)
        self.input_feature_similarity = float(input_feature_similarity)

    def _meta(self, similarity_type, **extra):
        meta = {'type': type(self).__name__,
                'similarity': similarity_type if similarity_type is not None
                else self.similarity_type,
                'seed': self.seed}
        meta.update(extra)
        meta['input_similarity'] = self.input_similarity
        meta['input_feature_similarity'] = self.input_feature_similarity
        return meta

    def partition(self, nodes, similarity=None, node_params=None, similarity_type=None):
        raise NotImplementedError
