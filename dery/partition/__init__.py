"""Partitioners: cut zoo models into blocks and group them into equivalence sets.

``PARTITIONERS.build(cfg).partition(nodes, similarity)`` returns the ``partition.json``
dict (see ``design.md`` and :mod:`dery.partition.base`).
"""
from .base import (BasePartitioner, check_partition, evaluate_partition, initial_starts,
                   size_limits)
from .baselines import RandomPartitioner, UniformPartitioner
from .cover_set import CoverSetPartitioner

__all__ = ['BasePartitioner', 'CoverSetPartitioner', 'UniformPartitioner',
           'RandomPartitioner', 'check_partition', 'evaluate_partition', 'initial_starts',
           'size_limits']
