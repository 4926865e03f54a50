"""Candidates and measured cost tables of the reassembly problem (stage 3).

Candidates: block ``j`` of every zoo model is a candidate for stage position
``j`` (blocks keep their depth order, so position 0 starts at a model's first
node and its stem fits), with the equivalence set the partition gave it; the
solver picks one candidate per position and at most one per set.

Costs are measured, not estimated: block params and FLOPs come from the zoo
models (``mmengine.analysis``), every possible stitch is built and measured
(cached by shape), stem and head likewise, so the integer program counts the
built network's params and FLOPs exactly.

Under ``assembly.resolution='chain'`` a block runs at the resolution the
blocks before it deliver (stitches stride by :func:`dery.models.chain_stride`,
never interpolate), so its FLOPs, the stitch into it and the head depend on
that resolution: the problem then carries :class:`~dery.solvers.StateTables`
whose states are the input grids ``(H, W)`` reachable from the stem, each
block measured at each grid it can receive.
"""
import json

import torch
import torch.nn as nn

from dery.models import build_stitch, chain_stride, normalize_stem
from dery.models.backbone import resnet_stem, resnet_stem_spec
from dery.registry import MODELS
from dery.solvers import AssemblyProblem, Candidate, StateTables
from dery.utils import to_plain
from dery.zoo import count_flops, count_params

__all__ = ['AssemblyTables', 'HeadProbe']

_DEFAULTS = dict(stem=dict(type='source'), resolution='native', stitch=dict(type='StitchLayer'),
                 stitch_consecutive=False)


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
        options (dict | None): checked ``cfg.assembly`` (its ``stem``,
            ``resolution``, ``stitch``, ``stitch_consecutive``); None: the defaults.
        strides (dict | None): ``{candidate id: stride}`` of the stitch in front
            of a candidate under ``'chain'`` (a fixed assembly's); others follow
            :func:`~dery.models.chain_stride`.

    :meth:`fixed` gives the tables of one given assembly (no partition).
    """

    def __init__(self, part, zoo, model_cfg, options=None, strides=None):
        self.part, self.zoo, self.model_cfg = part, zoo, model_cfg
        opts = dict(_DEFAULTS, **{k: v for k, v in (options or {}).items() if k in _DEFAULTS})
        self.stem = normalize_stem(opts['stem'])
        self.chain = opts['resolution'] == 'chain'
        self.stitch_form = dict(opts['stitch'])
        self._form_key = json.dumps(to_plain(self.stitch_form), sort_keys=True)
        self.stitch_consecutive = bool(opts['stitch_consecutive'])
        self.strides = dict(strides or {})
        self._stitch_cache, self._head_cache, self._stem_cache = {}, {}, {}
        self.candidates = []
        if part is None:
            self.k = 0
            self.by_id = {}
            return
        self.k = part.num_sets
        for name, mb in part.models.items():
            zm = self._card(name)
            for j, b in enumerate(mb.blocks):
                s, e = zm.index(b.start), zm.index(b.end)
                self.candidates.append(Candidate(
                    id=f'{name}:{j}', model=name, start=b.start, end=b.end, set=b.set, position=j,
                    params=zm.params(s, e), flops=zm.flops(s, e)))
        self.by_id = {c.id: c for c in self.candidates}

    @classmethod
    def fixed(cls, zoo, model_cfg, options, blocks):
        """The tables of the one assembly ``blocks`` (``[dict(model, start, end[, stride])]``): one
        candidate per position, so :meth:`problem` costs exactly that network."""
        tables = cls(None, zoo, model_cfg, options)
        for k, b in enumerate(blocks):
            zm = tables._card(b['model'])
            s, e = zm.index(b['start']), zm.index(b['end'])
            c = Candidate(id=f'{k}:{zm.name}', model=zm.name, start=zm.nodes[s], end=zm.nodes[e], set=None,
                          position=k, params=zm.params(s, e), flops=zm.flops(s, e))
            tables.candidates.append(c)
            if b.get('stride') is not None:
                tables.strides[c.id] = int(b['stride'])
        tables.k = len(tables.candidates)
        tables.by_id = {c.id: c for c in tables.candidates}
        return tables

    # ------------------------------------------------------------------ pieces
    def _card(self, name):
        """What the tables read of a zoo model (nodes, layouts, params, FLOPs): its
        :class:`~dery.zoo.ZooCard` when the zoo keeps cards (the model need not stay built), else the model."""
        card = getattr(self.zoo, 'card', None)
        return card(name) if card is not None else self.zoo[name]

    def _span(self, c):
        zm = self._card(c.model)
        return zm, zm.index(c.start), zm.index(c.end)

    def _consecutive(self, a, b):
        return a.model == b.model and self._span(a)[2] + 1 == self._span(b)[1]

    def _measured_stitch(self, src, dst, stride=None):
        key = (src, dst, stride, self._form_key)
        if key not in self._stitch_cache:
            st = build_stitch(self.stitch_form, src, dst, init='random', stride=stride)
            self._stitch_cache[key] = (count_params(st), count_flops(st, src.zeros()))
        return self._stitch_cache[key]

    def stitch_cost(self, a, b):
        """``(params, flops)`` of the stitch from candidate ``a`` into ``b`` (``'native'``)."""
        if self._consecutive(a, b) and not self.stitch_consecutive:
            return 0, 0
        za, ia, ea = self._span(a)
        zb, sb, _ = self._span(b)
        return self._measured_stitch(za.out_spec(ea), zb.in_spec(sb))

    def head_cost(self, c, spec=None):
        """``(params, flops)`` of out-norm + neck + head on ``c``'s output (``spec``: at another size)."""
        if spec is None:
            zm, _, e = self._span(c)
            spec = zm.out_spec(e)
        if spec not in self._head_cache:
            norm = nn.LayerNorm(spec.channels) if spec.family in ('vit', 'swin') else None
            neck = MODELS.build(dict(self.model_cfg.get('neck') or dict(type='GlobalAveragePooling')))
            head = MODELS.build(dict(self.model_cfg['head'], in_channels=spec.channels))
            probe = HeadProbe(norm, neck, head, spec)
            self._head_cache[spec] = (count_params(probe), count_flops(probe, spec.zeros()))
        return self._head_cache[spec]

    def stem_cost(self, c):
        """``((params, flops), first block's input grid)`` of the stem (and its stitch) before ``c``."""
        zm, s, _ = self._span(c)
        own = zm.in_spec(s)
        if self.stem['type'] == 'source':
            return (zm.stem_params(), zm.stem_flops()), own.grid
        ch = self.stem['channels']
        spec = resnet_stem_spec(ch, zm.input_size)
        if ch not in self._stem_cache:
            stem = resnet_stem(ch)
            self._stem_cache[ch] = (count_params(stem), count_flops(stem, torch.zeros((1, ) + tuple(zm.input_size))))
        params, flops = self._stem_cache[ch]
        given = self.strides.get(c.id)
        if (spec.family == own.family and spec.channels == own.channels and (self.chain or spec.grid == own.grid)
                and given in (None, 1)):
            return (params, flops), spec.grid  # no stem stitch
        if self.chain:
            stride = given or chain_stride(spec.grid, own.grid)
            dst = own.with_grid(spec.grid[0] // stride, spec.grid[1] // stride)
            sp, sf = self._measured_stitch(spec, dst, stride)
            return (params + sp, flops + sf), dst.grid
        sp, sf = self._measured_stitch(spec, own)
        return (params + sp, flops + sf), own.grid

    # ------------------------------------------------------------------ 'chain'
    def block_at(self, c, grid):
        """``(out TensorSpec, flops)`` of candidate ``c`` run on an input of size ``grid`` (runs the model)."""
        _, s, e = self._span(c)
        return self.zoo[c.model].cut_at(s, e, grid)

    def chain_edge(self, a, grid, b):
        """``(params, flops, b's input grid)`` of the stitch from ``a`` (run at ``grid``) into ``b``,
        or None when ``b`` cannot run at the size it would receive."""
        out, _ = self.block_at(a, grid)
        zb, sb, _ = self._span(b)
        own = zb.in_spec(sb)
        if self._consecutive(a, b) and not self.stitch_consecutive:
            params, flops, nxt = 0, 0, out.grid
        else:
            stride = self.strides.get(b.id) or chain_stride(out.grid, own.grid)
            nxt = (out.grid[0] // stride, out.grid[1] // stride)
            if min(nxt) < 1:
                return None
            params, flops = self._measured_stitch(out, own.with_grid(*nxt), stride)
        try:
            self.block_at(b, nxt)
        except (RuntimeError, ValueError, AssertionError, IndexError):  # b cannot run at this size: not allowed
            return None
        return params, flops, nxt

    def _states(self, by_pos, first_grid):
        first = {c.id: first_grid[c.id] for c in by_pos[0]}
        block, stitch, head = {}, {}, {}
        reach = {cid: [g] for cid, g in first.items()}
        for p in range(self.k):
            for c in by_pos[p]:
                for g in reach.get(c.id, []):
                    out, flops = self.block_at(c, g)
                    block[(c.id, g)] = (c.params, flops)
                    if p == self.k - 1:
                        head[(c.id, g)] = self.head_cost(c, out)
            if p == self.k - 1:
                break
            for a in by_pos[p]:
                for g in reach.get(a.id, []):
                    for b in by_pos[p + 1]:
                        e = self.chain_edge(a, g, b)
                        stitch[(a.id, g, b.id)] = e
                        if e is not None and e[2] not in reach.setdefault(b.id, []):
                            reach[b.id].append(e[2])
        return StateTables(first=first, block=block, stitch=stitch, head=head)

    # ------------------------------------------------------------------ the problem
    def problem(self, constraints, scores=None):
        """The :class:`~dery.solvers.AssemblyProblem` under ``constraints`` with per-block ``scores``."""
        for c in self.candidates:
            c.score = float((scores or {}).get(c.id, 0.0))
        by_pos = [[c for c in self.candidates if c.position == p] for p in range(self.k)]
        stems = {c.id: self.stem_cost(c) for c in by_pos[0]}
        first = {cid: cost for cid, (cost, _) in stems.items()}
        if self.chain:
            states = self._states(by_pos, {cid: grid for cid, (_, grid) in stems.items()})
            return AssemblyProblem(num_positions=self.k, candidates=self.candidates, first_stem=first,
                                   states=states, constraints=to_plain(constraints))
        sp, sf = {}, {}
        for p in range(self.k - 1):
            for a in by_pos[p]:
                for b in by_pos[p + 1]:
                    sp[(a.id, b.id)], sf[(a.id, b.id)] = self.stitch_cost(a, b)
        last = {c.id: self.head_cost(c) for c in by_pos[-1]}
        return AssemblyProblem(num_positions=self.k, candidates=self.candidates, stitch_params=sp,
                               stitch_flops=sf, first_stem=first, last_head=last,
                               constraints=to_plain(constraints))

    def blocks(self, ids):
        """``[dict(model, start, end)]`` of the candidates ``ids`` in stage order."""
        return [dict(model=self.by_id[i].model, start=self.by_id[i].start, end=self.by_id[i].end) for i in ids]
