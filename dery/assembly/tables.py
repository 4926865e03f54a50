"""Candidates and measured cost tables of the reassembly problem (stage 3).

Candidates: block ``j`` of every zoo model is a candidate for stage position
``j`` (blocks keep their depth order, so position 0 starts at a model's first
node and its stem fits), with the equivalence set the partition gave it; the
solver picks one candidate per position and at most one per set.

Costs are measured, not estimated: block params and FLOPs come from the zoo
models (``mmengine.analysis``), every possible stitch is built and measured
(cached by shape), stem and head likewise, so the integer program counts the
built network's params and FLOPs exactly.
"""
import torch
import torch.nn as nn

from dery.models import StitchLayer
from dery.registry import MODELS
from dery.solvers import AssemblyProblem, Candidate
from dery.utils import to_plain
from dery.zoo import count_flops, count_params

__all__ = ['AssemblyTables', 'HeadProbe']


class HeadProbe(nn.Module):
    """out-norm + neck + head of the built classifier, on a block's output (to measure the head's cost)."""

    def __init__(self, norm, neck, head, spec):
        super().__init__()
        self.norm, self.neck, self.head = norm, neck, head
        self.spec = spec

    def forward(self, x):
        x = self.norm(x) if self.norm is not None else x
        return self.head(self.neck((self.spec.to_nchw(x), )))


class AssemblyTables:
    """Candidates and measured cost tables for the solver (stitches cached by shape).

    Args:
        part (Partition): the stage-2 record.
        zoo (ZooCache): the built zoo.
        model_cfg (dict): the config's ``model`` (its ``neck`` and ``head``).
    """

    def __init__(self, part, zoo, model_cfg):
        self.part, self.zoo, self.model_cfg = part, zoo, model_cfg
        self.k = part.num_sets
        self._stitch_cache, self._head_cache = {}, {}
        self.candidates = []
        for name, mb in part.models.items():
            zm = zoo[name]
            for j, b in enumerate(mb.blocks):
                s, e = zm.index(b.start), zm.index(b.end)
                self.candidates.append(Candidate(
                    id=f'{name}:{j}', model=name, start=b.start, end=b.end, set=b.set, position=j,
                    params=zm.params(s, e), flops=zm.flops(s, e)))
        self.by_id = {c.id: c for c in self.candidates}

    def stitch_cost(self, a, b):
        za, zb = self.zoo[a.model], self.zoo[b.model]
        ea, sb = za.index(a.end), zb.index(b.start)
        if a.model == b.model and ea + 1 == sb:
            return 0, 0
        src, dst = za.out_spec(ea), zb.in_spec(sb)
        key = (src, dst)
        if key not in self._stitch_cache:
            st = StitchLayer.from_specs(src, dst, init='random')
            self._stitch_cache[key] = (count_params(st), count_flops(st, src.zeros()))
        return self._stitch_cache[key]

    def head_cost(self, c):
        zm = self.zoo[c.model]
        spec = zm.out_spec(zm.index(c.end))
        if spec not in self._head_cache:
            norm = nn.LayerNorm(spec.channels) if spec.family in ('vit', 'swin') else None
            neck = MODELS.build(dict(self.model_cfg.get('neck') or dict(type='GlobalAveragePooling')))
            head = MODELS.build(dict(self.model_cfg['head'], in_channels=spec.channels))
            probe = HeadProbe(norm, neck, head, spec)
            self._head_cache[spec] = (count_params(probe), count_flops(probe, spec.zeros()))
        return self._head_cache[spec]

    def problem(self, constraints, scores=None):
        """The :class:`~dery.solvers.AssemblyProblem` under ``constraints`` with per-block ``scores``."""
        for c in self.candidates:
            c.score = float((scores or {}).get(c.id, 0.0))
        by_pos = [[c for c in self.candidates if c.position == p] for p in range(self.k)]
        sp, sf = {}, {}
        for p in range(self.k - 1):
            for a in by_pos[p]:
                for b in by_pos[p + 1]:
                    sp[(a.id, b.id)], sf[(a.id, b.id)] = self.stitch_cost(a, b)
        first = {c.id: (self.zoo[c.model].stem_params(), self.zoo[c.model].stem_flops()) for c in by_pos[0]}
        last = {c.id: self.head_cost(c) for c in by_pos[-1]}
        return AssemblyProblem(num_positions=self.k, candidates=self.candidates, stitch_params=sp,
                               stitch_flops=sf, first_stem=first, last_head=last,
                               constraints=to_plain(constraints))

    def blocks(self, ids):
        """``[dict(model, start, end)]`` of the candidates ``ids`` in stage order."""
        return [dict(model=self.by_id[i].model, start=self.by_id[i].start, end=self.by_id[i].end) for i in ids]
