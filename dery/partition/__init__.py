"""Partitioners: cut zoo models into blocks and group them into equivalence sets.

``PARTITIONERS.build(cfg).partition(nodes, similarity)`` returns a
:class:`Partition`, the record written to ``partition.json``
(:mod:`dery.partition.record`). The problem and its objective are described in
:mod:`dery.partition.problem`; the vectorised kernels shared by the
partitioners live in :mod:`dery.partition.kernels`.
"""
from .base import BasePartitioner, evaluate_partition
from .baselines import RandomPartitioner, UniformPartitioner
from .cover_set import CoverSetPartitioner
from .problem import initial_starts, size_limits
from .record import EquivalenceSet, ModelBlocks, Partition, PartitionBlock, PartitionError

__all__ = ['BasePartitioner', 'CoverSetPartitioner', 'UniformPartitioner', 'RandomPartitioner',
           'evaluate_partition', 'initial_starts', 'size_limits', 'Partition', 'PartitionBlock',
           'ModelBlocks', 'EquivalenceSet', 'PartitionError']
