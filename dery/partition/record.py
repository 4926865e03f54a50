"""``Partition``: the typed record of stage 2, read and written only here (``partition.json``).

Fields (``design.md``; the JSON keeps them in this order, so the same inputs
and seed give a byte-identical file)::

    type            partitioner class name
    num_sets        K
    similarity      similarity type (str, 'unknown' unless given)
    seed            the seed
    objective       float (None for a baseline called without similarity)
    models          {model: {nodes: [names], blocks: [{start, end, set, start_index,
                     end_index, num_nodes[, params]}]}}   K blocks covering the nodes in order
    sets            [{anchor: [model, block index], members: [[model, block index], ...]
                     (one per model, model order, anchor included), score: float}]
                    ordered by set id (set 0 the shallowest for CoverSetPartitioner)
    size_limits     {model: max nodes (int) or max parameters (float) per block}
    ...             partitioner settings and diagnostics (``settings``: eps, restarts,
                    max_iters, size_limit, assignment, refine, best_restart, iterations,
                    converged, refined_restarts, history, input_similarity, ...)
    stamp           what made the file (:class:`dery.utils.stamp.Stamp`; ``config_stamp`` in
                    files of earlier versions, which are never reused)

Files written before the record existed (no ``start_index``/``end_index``/
``num_nodes``, no ``type`` or ``size_limits``) still load: the missing fields
are derived from the node lists.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from dery.errors import DeryError
from dery.utils import atomic_save_json, load_json

__all__ = ['Partition', 'PartitionBlock', 'ModelBlocks', 'EquivalenceSet', 'PartitionError',
           'round_significant']

_CORE = ('type', 'num_sets', 'similarity', 'seed', 'objective', 'models', 'sets', 'size_limits')
_STAMP_KEY = 'stamp'


class PartitionError(DeryError, ValueError):
    """A partition that is malformed or does not fit the zoo it is used with."""


def round_significant(x, digits=10):
    """Plain Python float rounded to ``digits`` significant digits (None stays None)."""
    if x is None:
        return None
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f'{x:.{digits}g}')


@dataclass
class PartitionBlock:
    """Block ``[start, end]`` (inclusive) of one model, in equivalence set ``set``."""
    start: str
    end: str
    set: int
    start_index: int
    end_index: int
    params: Optional[float] = None

    @property
    def num_nodes(self) -> int:
        return self.end_index - self.start_index + 1

    def to_json(self) -> dict:
        d = {'start': self.start, 'end': self.end, 'set': self.set, 'start_index': self.start_index,
             'end_index': self.end_index, 'num_nodes': self.num_nodes}
        if self.params is not None:
            d['params'] = self.params
        return d


@dataclass
class ModelBlocks:
    """The node list of one model and its K blocks in depth order."""
    nodes: List[str]
    blocks: List[PartitionBlock]

    def to_json(self) -> dict:
        return {'nodes': list(self.nodes), 'blocks': [b.to_json() for b in self.blocks]}


@dataclass
class EquivalenceSet:
    """One set: its anchor block and its members (one block per model)."""
    anchor: Tuple[str, int]
    members: List[Tuple[str, int]]
    score: Optional[float] = None

    def to_json(self) -> dict:
        return {'anchor': [self.anchor[0], int(self.anchor[1])],
                'members': [[m, int(k)] for m, k in self.members], 'score': self.score}


@dataclass
class Partition:
    """The cover-set partition of a zoo (``partition.json``)."""
    type: str
    num_sets: int
    similarity: str
    seed: Any
    objective: Optional[float]
    models: Dict[str, ModelBlocks]
    sets: List[EquivalenceSet]
    size_limits: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)
    stamp: Optional[dict] = None

    @classmethod
    def from_state(cls, problem, starts, blockset, anchors, meta, renumber=True) -> 'Partition':
        """The record of one solver state (plain Python types, deterministic).

        ``problem``: a :class:`~dery.partition.problem.Problem`; ``starts`` /
        ``blockset``: ``[M, K]`` ints; ``anchors``: ``[K]`` anchor models (or
        None without similarity: then the first model's member is reported as
        anchor and the objective is None); ``meta``: ``type``, ``similarity``,
        ``seed`` and the partitioner's settings and diagnostics. Sets are
        renumbered by the mean relative depth of their members (ties: previous
        index) when ``renumber``; set 0 is the shallowest.
        """
        from .kernels import objective_of
        meta = dict(meta)
        M, K = problem.M, problem.K
        starts = [[int(v) for v in row] for row in np.asarray(starts)]
        blockset = [[int(v) for v in row] for row in np.asarray(blockset)]
        ends = [[(starts[m][k + 1] - 1) if k < K - 1 else int(problem.sizes[m]) - 1 for k in range(K)]
                for m in range(M)]
        if anchors is None:
            anchors_l = [0] * K
            objective, scores = None, [None] * K
        else:
            anchors_l = [int(a) for a in np.asarray(anchors)]
            objective, scores = objective_of(problem, starts, blockset, anchors_l)
        setblock = [[0] * K for _ in range(M)]
        for m in range(M):
            for k in range(K):
                setblock[m][blockset[m][k]] = k
        order = list(range(K))
        if renumber:
            depth = []
            for t in range(K):
                # midpoint of each member block as a fraction of its model's depth
                d = [(starts[m][setblock[m][t]] + ends[m][setblock[m][t]] + 1) / (2.0 * int(problem.sizes[m]))
                     for m in range(M)]
                depth.append(sum(d) / M)
            order = sorted(range(K), key=lambda t: (depth[t], t))
        new_id = {old: new for new, old in enumerate(order)}
        models = {}
        for m, name in enumerate(problem.names):
            blocks = []
            for k in range(K):
                s, e = starts[m][k], ends[m][k]
                params = None if problem.params is None else round_significant(sum(problem.params[m][s:e + 1]))
                blocks.append(PartitionBlock(problem.nodes[m][s], problem.nodes[m][e], new_id[blockset[m][k]],
                                             s, e, params))
            models[name] = ModelBlocks(list(problem.nodes[m]), blocks)
        sets = [EquivalenceSet((problem.names[anchors_l[t]], setblock[anchors_l[t]][t]),
                               [(problem.names[m], setblock[m][t]) for m in range(M)], round_significant(scores[t]))
                for t in order]
        limits = {name: (int(lim) if isinstance(lim, (int, np.integer)) else round_significant(lim))
                  for name, lim in zip(problem.names, problem.limits)}
        kind, similarity, seed = meta.pop('type'), meta.pop('similarity', 'unknown'), meta.pop('seed', None)
        return cls(type=kind, num_sets=K, similarity=similarity, seed=seed, objective=round_significant(objective),
                   models=models, sets=sets, size_limits=limits, settings=meta)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        d = {'type': self.type, 'num_sets': self.num_sets, 'similarity': self.similarity,
             'seed': self.seed, 'objective': self.objective,
             'models': {name: mb.to_json() for name, mb in self.models.items()},
             'sets': [s.to_json() for s in self.sets], 'size_limits': dict(self.size_limits)}
        d.update(self.settings)
        if self.stamp is not None:
            d[_STAMP_KEY] = self.stamp
        return d

    @classmethod
    def from_json(cls, d, what='partition') -> 'Partition':
        """A record from a ``partition.json`` dict (or a Partition, returned as is)."""
        if isinstance(d, Partition):
            return d
        if not isinstance(d, dict):
            raise PartitionError(f'{what}: expected a JSON object, got {type(d).__name__}')
        missing = [k for k in ('num_sets', 'models', 'sets') if k not in d]
        if missing:
            raise PartitionError(f'{what} has no {", ".join(missing)}; it was edited or written by another '
                                 'program: delete it and rerun tools/partition.py')
        try:
            models = {}
            for name, info in d['models'].items():
                nodes = [str(n) for n in info['nodes']]
                blocks = []
                for b in info['blocks']:
                    s = b['start_index'] if 'start_index' in b else nodes.index(b['start'])
                    e = b['end_index'] if 'end_index' in b else nodes.index(b['end'])
                    blocks.append(PartitionBlock(b['start'], b['end'], b['set'], int(s), int(e), b.get('params')))
                models[name] = ModelBlocks(nodes, blocks)
            sets = [EquivalenceSet((s['anchor'][0], int(s['anchor'][1])),
                                   [(m, int(k)) for m, k in s['members']], s.get('score')) for s in d['sets']]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PartitionError(f'{what} is malformed ({type(e).__name__}: {e}); delete it and rerun '
                                 'tools/partition.py') from None
        settings = {k: v for k, v in d.items() if k not in _CORE and k not in (_STAMP_KEY, 'config_stamp')}
        return cls(type=d.get('type', 'unknown'), num_sets=int(d['num_sets']),
                   similarity=d.get('similarity', 'unknown'), seed=d.get('seed'), objective=d.get('objective'),
                   models=models, sets=sets, size_limits=dict(d.get('size_limits') or {}), settings=settings,
                   stamp=d.get(_STAMP_KEY, d.get('config_stamp')))

    def save(self, path):
        atomic_save_json(self.to_json(), path)
        return path

    @classmethod
    def load(cls, path) -> 'Partition':
        return cls.from_json(load_json(path, 'partition file'), what=str(path))

    # ------------------------------------------------------------------ checks
    def validate(self, nodes=None, size_limits=None, what='partition.json') -> 'Partition':
        """Check the structure; raise :class:`PartitionError` naming the first problem.

        Every model is cut into ``num_sets`` non-empty contiguous blocks that
        cover its nodes in order; ``start``/``end`` name those nodes; every set
        holds exactly one block of every model and agrees with the blocks'
        ``set``; the anchor is a member. ``nodes`` (``{model: [node names]}``,
        e.g. from the zoo the partition is used with): the same models with the
        same node lists. ``size_limits`` (``{model: max nodes}``): block sizes.
        """
        K, models = self.num_sets, self.models
        fix = 'rerun tools/partition.py'
        if nodes is not None:
            if set(nodes) != set(models):
                raise PartitionError(f'{what} was made from another zoo (models {sorted(models)} vs the '
                                     f"config's {sorted(nodes)}); delete it or {fix}")
            for name in models:
                if [str(n) for n in nodes[name]] != models[name].nodes:
                    raise PartitionError(f"{what}: the nodes of '{name}' differ from the zoo model's; {fix}")
        for name, mb in models.items():
            if len(mb.blocks) != K:
                raise PartitionError(f"{what}: '{name}' has {len(mb.blocks)} blocks, expected num_sets={K}")
            pos = 0
            for k, blk in enumerate(mb.blocks):
                where = f'block {k} [{blk.start}, {blk.end}]'
                if not (0 <= blk.start_index <= blk.end_index < len(mb.nodes)) or \
                        mb.nodes[blk.start_index] != blk.start or mb.nodes[blk.end_index] != blk.end:
                    raise PartitionError(f"{what}: blocks of '{name}': {where} does not name the nodes at its "
                                         f'indices {blk.start_index}..{blk.end_index} (edited by hand?); {fix}')
                if blk.start_index != pos:
                    raise PartitionError(f"{what}: blocks of '{name}' are not contiguous and ordered (at {where}); "
                                         f'{fix}')
                if size_limits is not None and blk.num_nodes > size_limits[name]:
                    raise PartitionError(f"{what}: blocks of '{name}': {where} has {blk.num_nodes} nodes, limit "
                                         f'{size_limits[name]}')
                pos = blk.end_index + 1
            if pos != len(mb.nodes):
                raise PartitionError(f"{what}: blocks of '{name}' cover {pos} of its {len(mb.nodes)} nodes; {fix}")
            sets_of = sorted(b.set for b in mb.blocks)
            if sets_of != list(range(K)):
                raise PartitionError(f"{what}: blocks of '{name}' are in sets {sets_of}; each set must hold "
                                     f'exactly one block of each model; {fix}')
        if len(self.sets) != K:
            raise PartitionError(f'{what}: {len(self.sets)} sets, expected {K}')
        for t, st in enumerate(self.sets):
            members = [tuple(m) for m in st.members]
            if sorted(m for m, _ in members) != sorted(models):
                raise PartitionError(f'{what}: set {t} does not hold exactly one block of every model')
            for m, k in members:
                if models[m].blocks[k].set != t:
                    raise PartitionError(f'{what}: set {t} lists block {k} of {m!r}, whose set is '
                                         f'{models[m].blocks[k].set}')
            if tuple(st.anchor) not in members:
                raise PartitionError(f'{what}: set {t}: anchor {list(st.anchor)} is not a member')
        return self

    # ------------------------------------------------------------------ views
    @property
    def nodes(self) -> Dict[str, List[str]]:
        return {name: mb.nodes for name, mb in self.models.items()}

    def table(self):
        """A rich Table: model, blocks as node ranges, set of each block."""
        from rich.table import Table
        objective = '-' if self.objective is None else f'{self.objective:.4f}'
        table = Table(title=f'DeRy partition: K={self.num_sets}, similarity {self.similarity}, '
                            f'objective {objective}, seed {self.seed}')
        table.add_column('model')
        for b in range(self.num_sets):
            table.add_column(f'block {b}: nodes (set)')
        for name, mb in self.models.items():
            table.add_row(name, *[f'{b.start}..{b.end} [{b.start_index}-{b.end_index}] (set {b.set})'
                                  for b in mb.blocks])
        return table
