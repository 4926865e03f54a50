"""``Assembly``: the typed record of stage 3, read and written only here (``assembly.json``).

Fields (``design.md``; the JSON keeps this order, so the same config and seed
give a byte-identical file)::

    blocks         [{model, start, end, set, position, family, params, flops[, stride]}] in stage
                   order; ``stride`` (``resolution='chain'``): of the stitch in front of the block
    stitches       [None | {index, src, dst, in_family, out_family, in_shape, out_shape, stride,
                    params, init, fit_error}]: the stitch in front of block k (k >= 1); None when
                    block k continues block k-1 in its own model
    stem           {type: 'source'} | {type: 'resnet', channels} (files of earlier versions:
                   'source' | 'resnet', read as 64 channels)
    resolution     'native' | 'chain' (earlier files: 'native')
    stitch         the stitch form, {type: 'StitchLayer' | 'NormActStitch', ...}
    stitch_consecutive  whether consecutive cuts of one model got a stitch
    stem_stitch    None | {in_shape, out_shape, stride, params}: the stitch after a fresh stem
    input_size     [C, H, W] every cost was measured at
    out_channels   channels of the last block's output (the head's input)
    params, flops  measured on the built network (stem, blocks, stitches, head)
    proxy          {type, score, num_batches, batch_size, seed}
    constraints    the budget
    solver         {type, status, num_proxy_evals, info}
    candidates     the assemblies the solver ranked, best first
    surrogate      {type, scores[, unscored]}: the per-block scores of the integer program;
                   ``unscored``: the blocks over the budget on their own (in no assembly, so the
                   zoo pass made no score for them)
    zoo            {name: model_zoo.yml entry} of the models the blocks come from
    seed           the proxy seed
    stamp          what made the file (:class:`dery.utils.stamp.Stamp`; ``config_stamp`` in
                   files of earlier versions, which are never reused)

:meth:`Assembly.backbone_cfg` turns a record into the ``ReassembledBackbone``
config that rebuilds the network.
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from dery.errors import DeryError
from dery.utils import atomic_save_json, human, load_json

__all__ = ['Assembly', 'AssemblyBlock', 'StitchRecord', 'AssemblyError']

_STAMP_KEY = 'stamp'
_ORDER = ('blocks', 'stitches', 'stem', 'resolution', 'stitch', 'stitch_consecutive', 'stem_stitch', 'input_size',
          'out_channels', 'params', 'flops', 'proxy', 'constraints', 'solver', 'candidates', 'surrogate', 'zoo',
          'seed')
_REQUIRED = ('blocks', 'zoo', 'input_size', 'out_channels')


class AssemblyError(DeryError, ValueError):
    """An assembly that is malformed, or does not fit the config or zoo it is used with."""


def _stem_dict(stem):
    """The stem of a record as a dict (earlier files wrote 'source' / 'resnet', 64 channels)."""
    if isinstance(stem, str):
        return dict(type='resnet', channels=64) if stem == 'resnet' else dict(type=stem)
    return dict(stem)


@dataclass
class AssemblyBlock:
    """Block ``[start, end]`` of zoo model ``model`` at stage ``position``."""
    model: str
    start: str
    end: str
    set: Optional[int] = None
    position: Optional[int] = None
    family: Optional[str] = None
    params: Optional[int] = None
    flops: Optional[int] = None
    stride: Optional[int] = None

    def to_json(self) -> dict:
        d = dict(model=self.model, start=self.start, end=self.end, set=self.set, position=self.position,
                 family=self.family, params=self.params, flops=self.flops)
        if self.stride is not None:
            d['stride'] = self.stride
        return d

    def cut(self) -> dict:
        """``dict(model, start, end)``: what ``ReassembledBackbone(blocks=...)`` takes."""
        return dict(model=self.model, start=self.start, end=self.end)


@dataclass
class StitchRecord:
    """The stitch layer in front of block ``index``."""
    index: int
    src: str
    dst: str
    in_family: str
    out_family: str
    in_shape: List[int]
    out_shape: List[int]
    stride: int
    params: int
    init: str
    fit_error: Optional[float] = None

    def to_json(self) -> dict:
        return dict(index=self.index, src=self.src, dst=self.dst, in_family=self.in_family,
                    out_family=self.out_family, in_shape=list(self.in_shape), out_shape=list(self.out_shape),
                    stride=self.stride, params=self.params, init=self.init, fit_error=self.fit_error)


@dataclass
class Assembly:
    """A reassembled network: its blocks, stitches, measured size and how it was chosen."""
    blocks: List[AssemblyBlock]
    stitches: List[Optional[StitchRecord]]
    input_size: List[int]
    out_channels: int
    zoo: Dict[str, dict]
    stem: Any = field(default_factory=lambda: dict(type='source'))
    resolution: str = 'native'
    stitch: Dict[str, Any] = field(default_factory=lambda: dict(type='StitchLayer'))
    stitch_consecutive: bool = False
    stem_stitch: Optional[dict] = None
    params: Optional[int] = None
    flops: Optional[int] = None
    proxy: Dict[str, Any] = field(default_factory=dict)
    constraints: Dict[str, Any] = field(default_factory=dict)
    solver: Dict[str, Any] = field(default_factory=dict)
    candidates: List[dict] = field(default_factory=list)
    surrogate: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    stamp: Optional[dict] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        d = dict(blocks=[b.to_json() for b in self.blocks],
                 stitches=[None if s is None else s.to_json() for s in self.stitches], stem=_stem_dict(self.stem),
                 resolution=self.resolution, stitch=dict(self.stitch), stitch_consecutive=bool(self.stitch_consecutive),
                 stem_stitch=self.stem_stitch,
                 input_size=list(self.input_size), out_channels=int(self.out_channels), params=self.params,
                 flops=self.flops, proxy=self.proxy, constraints=self.constraints, solver=self.solver,
                 candidates=self.candidates, surrogate=self.surrogate, zoo=self.zoo, seed=self.seed)
        d.update(self.extra)
        if self.stamp is not None:
            d[_STAMP_KEY] = self.stamp
        return d

    @classmethod
    def from_json(cls, d, what='assembly') -> 'Assembly':
        """A record from an ``assembly.json`` dict (or an Assembly, returned as is)."""
        if isinstance(d, Assembly):
            return d
        if not isinstance(d, dict):
            raise AssemblyError(f'{what}: expected a JSON object, got {type(d).__name__}')
        for key in _REQUIRED:
            if key not in d:
                raise AssemblyError(f'{what} has no `{key}`; it was edited or written by another version. '
                                    'Delete it and rerun tools/assemble.py')
        try:
            blocks = [AssemblyBlock(**{k: b.get(k) for k in AssemblyBlock.__dataclass_fields__})
                      for b in d['blocks']]
            stitches = [None if s is None else StitchRecord(**{k: s.get(k) for k in StitchRecord.__dataclass_fields__})
                        for s in d.get('stitches') or [None] * max(0, len(blocks) - 1)]
        except (KeyError, TypeError, AttributeError) as e:
            raise AssemblyError(f'{what} is malformed ({type(e).__name__}: {e}); delete it and rerun '
                                'tools/assemble.py') from None
        extra = {k: v for k, v in d.items() if k not in _ORDER and k not in (_STAMP_KEY, 'config_stamp')}
        rec = cls(blocks=blocks, stitches=stitches, input_size=list(d['input_size']),
                  out_channels=int(d['out_channels']), zoo=dict(d['zoo']), stem=_stem_dict(d.get('stem', 'source')),
                  resolution=d.get('resolution', 'native'), stitch=dict(d.get('stitch') or dict(type='StitchLayer')),
                  stitch_consecutive=bool(d.get('stitch_consecutive', False)), stem_stitch=d.get('stem_stitch'),
                  params=d.get('params'), flops=d.get('flops'), proxy=dict(d.get('proxy') or {}),
                  constraints=dict(d.get('constraints') or {}), solver=dict(d.get('solver') or {}),
                  candidates=list(d.get('candidates') or []), surrogate=dict(d.get('surrogate') or {}),
                  seed=d.get('seed'), stamp=d.get(_STAMP_KEY, d.get('config_stamp')), extra=extra)
        return rec.validate(what=what)

    def save(self, path):
        atomic_save_json(self.to_json(), path)
        return path

    @classmethod
    def load(cls, path) -> 'Assembly':
        if not osp.isfile(path):
            raise AssemblyError(f'{path} not found; run tools/assemble.py first (tools/train.py does it for you)')
        return cls.from_json(load_json(path, 'assembly file'), what=str(path))

    # ------------------------------------------------------------------ checks
    def validate(self, zoo=None, what='assembly') -> 'Assembly':
        """Check the structure (and with ``zoo``, that every block names nodes of its model)."""
        if not self.blocks:
            raise AssemblyError(f'{what} has no blocks')
        if len(self.stitches) != len(self.blocks) - 1:
            raise AssemblyError(f'{what} has {len(self.stitches)} stitches for {len(self.blocks)} blocks')
        missing = sorted({b.model for b in self.blocks} - set(self.zoo))
        if missing:
            raise AssemblyError(f'{what}: blocks of {missing} have no entry in its `zoo`')
        if len(self.input_size) != 3:
            raise AssemblyError(f'{what}: input_size must be [C, H, W], got {self.input_size}')
        if self.resolution not in ('native', 'chain'):
            raise AssemblyError(f"{what}: resolution must be 'native' or 'chain', got {self.resolution!r}")
        if zoo is not None:
            for k, b in enumerate(self.blocks):
                zm = zoo[b.model]
                try:
                    i, j = zm.index(b.start), zm.index(b.end)
                except (KeyError, IndexError) as e:
                    raise AssemblyError(f'{what}: block {k} {b.cut()} does not fit the zoo ({e.args[0]})') from None
                if i > j:
                    raise AssemblyError(f'{what}: block {k} starts at {b.start}, after its end {b.end}')
        return self

    # ------------------------------------------------------------------ views
    @property
    def models(self) -> List[str]:
        """The zoo models the blocks come from, in first-use order."""
        return list(dict.fromkeys(b.model for b in self.blocks))

    def backbone_cfg(self, work_dir=None, frozen_blocks=False, init=True) -> dict:
        """The ``ReassembledBackbone`` config that rebuilds this network.

        Random-init architecture (``pretrained=False``); with ``init`` and a
        ``work_dir``, ``init_cfg`` loads ``WORK_DIR/assembled_init.pth`` (zoo
        blocks and fitted stitches).
        """
        blocks = [dict(b.cut(), **({} if b.stride is None else dict(stride=b.stride))) for b in self.blocks]
        cfg = dict(type='ReassembledBackbone', blocks=blocks,
                   zoo=[dict(v, name=k) for k, v in self.zoo.items()], pretrained=False,
                   input_size=tuple(self.input_size), stem=_stem_dict(self.stem), stitch_init='random',
                   frozen_blocks=frozen_blocks)
        if self.resolution != 'native':
            cfg['resolution'] = self.resolution
        if dict(self.stitch) != dict(type='StitchLayer'):
            cfg['stitch'] = dict(self.stitch)
        if self.stitch_consecutive:
            cfg['stitch_consecutive'] = True
        if init and work_dir is not None:
            cfg['init_cfg'] = dict(type='Pretrained', checkpoint=osp.join(work_dir, 'assembled_init.pth'),
                                   prefix='backbone.')
        return cfg

    def describe(self) -> str:
        """``model[start..end] -> ...``: one line naming the blocks."""
        return ' -> '.join(f'{b.model}[{b.start}..{b.end}]' for b in self.blocks)

    def table(self):
        """A rich Table summarising the assembly."""
        from rich.table import Table
        cons = self.constraints
        proxy_score = self.proxy.get('score')
        stem = _stem_dict(self.stem)
        width = f' ({stem["channels"]} ch)' if 'channels' in stem else ''
        how = f'stem {stem["type"]}{width}, {self.resolution} resolution, {self.stitch.get("type")} stitches'

        if self.solver.get('type') == 'fixed':
            chosen = 'fixed assembly (given by the config)'
        else:
            chosen = (f'proxy {self.proxy.get("type")} {"-" if proxy_score is None else f"{proxy_score:.3f}"}; '
                      f'solver {self.solver.get("type")} {self.solver.get("status")}, '
                      f'{self.solver.get("num_proxy_evals")} proxy evals')
        title = (f'DeRy assembly: {human(self.params)} params (budget {cons.get("params")}), '
                 f'{human(self.flops)} FLOPs (budget {cons.get("flops")}); {how}; {chosen}')
        t = Table(title=title)
        for col in ('stage', 'model', 'family', 'nodes', 'set', 'params', 'FLOPs', 'stitch in'):
            t.add_column(col)
        for k, b in enumerate(self.blocks):
            st = self.stitches[k - 1] if k > 0 else None
            stride = '' if st is None or st.stride == 1 else f' stride {st.stride}'
            stitch = '-' if st is None else (f'{st.in_family}->{st.out_family} {human(st.params)}{stride}'
                                             + ('' if st.fit_error is None else f' (fit err {st.fit_error})'))
            if k == 0 and self.stem_stitch:
                stitch = f'stem->{b.family} {human(self.stem_stitch["params"])}'
            t.add_row(str(k), b.model, str(b.family), f'{b.start} .. {b.end}', '-' if b.set is None else str(b.set),
                      '-' if b.params is None else human(b.params), '-' if b.flops is None else human(b.flops),
                      stitch)
        return t
