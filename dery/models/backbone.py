"""``ReassembledBackbone``: zoo blocks stitched in stage order."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule

from dery.errors import ConfigError
from dery.registry import MODELS
from dery.zoo import TensorSpec, ZooCache, capture_node_features
from .stitch import StitchLayer, build_stitch


#: ``stem=`` choices
STEMS = ('source', 'resnet')
#: ``resolution=`` choices: blocks at their own models' resolution (stitches resample), or at
#: whatever the chain delivers (stitches change channels with a stride, never interpolate)
RESOLUTIONS = ('native', 'chain')


def normalize_stem(stem):
    """``dict(type='source')`` or ``dict(type='resnet', channels=C)`` from ``'source'``,
    ``'resnet'`` (64 channels) or such a dict; one line for anything else."""
    if isinstance(stem, str):
        stem = dict(type=stem)
    if not isinstance(stem, dict) or stem.get('type') not in STEMS:
        raise ConfigError(f"stem must be one of 'source', 'resnet' (or dict(type='source'), dict(type='resnet', "
                          f'channels=C)), got {stem!r}')
    stem = dict(stem)
    kind = stem.pop('type')
    if kind == 'resnet':
        c = stem.pop('channels', 64)
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f'stem.channels must be an integer >= 1, got {c!r}')
        out = dict(type='resnet', channels=c)
    else:
        out = dict(type='source')
    if stem:
        raise ConfigError(f"stem type {kind!r} has no option {', '.join(map(repr, stem))}"
                          + ("; dict(type='resnet', channels=C) takes channels" if kind == 'source' else ''))
    return out


def chain_stride(delivered, native):
    """Stride of a stitch under ``resolution='chain'`` when the assembly does not give one.

    ``s`` when the delivered map (``(H, W)``) is ``s >= 2`` times the next
    block's own input size in both directions, else 1: a block never runs on a
    map larger than its own by a whole factor, and a smaller or non-integer one
    is taken as it is (no interpolation).
    """
    (dh, dw), (nh, nw) = (int(v) for v in delivered), (int(v) for v in native)
    if nh > 0 and nw > 0 and dh % nh == 0 and dw % nw == 0 and dh // nh == dw // nw >= 2:
        return dh // nh
    return 1


def resnet_stem(channels=64):
    """The original DeRy code's fresh stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))


def resnet_stem_spec(channels, input_size):
    """:class:`TensorSpec` of :func:`resnet_stem`'s output on ``(C, H, W)`` images."""
    def down(n):
        n = (n + 2 * 3 - 7) // 2 + 1  # conv 7x7 / 2, padding 3
        return (n + 2 * 1 - 3) // 2 + 1  # max-pool 3x3 / 2, padding 1
    return TensorSpec('cnn', (channels, down(int(input_size[1])), down(int(input_size[2]))))


_BLOCK_KEYS = ('model', 'start', 'end', 'stride')


@MODELS.register_module()
class ReassembledBackbone(BaseModule):
    """A network reassembled from zoo blocks (DeRy, step 5).

    Args:
        blocks (list[dict]): in stage order, ``dict(model=zoo name, start=node,
            end=node)`` (node names or indices); under ``resolution='chain'``
            optionally ``stride``: the stride of the stitch in front of the
            block (block 0: the stem's stitch), else :func:`chain_stride`.
        zoo (str | list | dict | ZooCache | None): ``model_zoo.yml`` path, or
            inline entries (list of entry dicts, or name -> entry); None: the
            default zoo file. From Python, a :class:`~dery.zoo.ZooCache` whose
            built models the blocks share (``pretrained`` and ``input_size``
            are then the cache's).
        pretrained (bool): take the blocks' (and stem's) weights from the zoo.
            False builds the architecture only (e.g. when ``init_cfg`` loads
            ``assembled_init.pth``).
        input_size (tuple): ``(C, H, W)`` the shapes are probed at.
        stem (str | dict): ``'source'`` / ``dict(type='source')`` (the first
            block's model stem with its weights) or ``dict(type='resnet',
            channels=C)`` (``'resnet'``: C=64; the original code's fresh stem,
            7x7/2 conv, BN, ReLU, 3x3/2 max-pool, then a stitch to the first
            block unless the widths, layouts and, under ``'native'``, the sizes
            agree).
        stitch_init (str): ``'lstsq'`` (fit with :meth:`fit_stitches`; random
            until then) or ``'random'``.
        frozen_blocks (bool | list[int]): blocks kept frozen (FZ protocol):
            no gradients, norm layers in eval mode.
        out_indices (sequence[int]): blocks whose outputs are returned, as
            ``[B, C, H, W]`` maps whatever the family (tokens without prefix
            tokens, reshaped to their grid).
        out_norm (bool): a LayerNorm on transformer outputs before they are
            returned (the source models' final norms belong to their heads).
        resolution (str): ``'native'``: every block runs at the resolution it
            has in its own model and stitches resample; ``'chain'`` (the
            original code): every block runs at the resolution the chain
            delivers, stitches change channels with a stride and never
            interpolate.
        stitch (dict): the stitch form, a :class:`StitchLayer` type in
            ``MODELS`` with its options (default ``dict(type='StitchLayer')``,
            the affine one; ``dict(type='NormActStitch')``: the original's).
        stitch_consecutive (bool): a stitch also between consecutive cuts of
            one model (the original code); default an identity.

    A zoo node that appears in two blocks (two cuts of one model that overlap)
    is copied: every block has weights of its own.
    """

    def __init__(self, blocks, zoo=None, pretrained=True, input_size=(3, 224, 224), stem='source',
                 stitch_init='lstsq', frozen_blocks=False, out_indices=(-1, ), out_norm=True, resolution='native',
                 stitch=None, stitch_consecutive=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not blocks:
            raise ConfigError('ReassembledBackbone needs at least one block')
        self.stem_cfg = normalize_stem(stem)
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be 'native' or 'chain', got {resolution!r}")
        self.resolution = resolution
        self.stitch_cfg = dict(stitch or dict(type='StitchLayer'))
        self.stitch_consecutive = bool(stitch_consecutive)
        chain = resolution == 'chain'
        cache = zoo if isinstance(zoo, ZooCache) else ZooCache(zoo, pretrained, input_size)
        self.block_cfgs = [dict(b) for b in blocks]
        self.input_size = tuple(cache.input_size if isinstance(zoo, ZooCache) else input_size)
        self.in_specs, self.out_specs, self.specs = [], [], []
        for k, b in enumerate(self.block_cfgs):
            extra = sorted(set(b) - set(_BLOCK_KEYS))
            if extra:
                raise ConfigError(f'block {k} {dict(b)} has unknown keys {extra}; a block is dict(model, start, end'
                                  "[, stride under resolution='chain'])")
            stride = b.get('stride')
            if stride is not None and (not chain or isinstance(stride, bool) or not isinstance(stride, int)
                                       or stride < 1):
                raise ConfigError(f'block {k}: stride {stride!r} ' + (
                    'must be an integer >= 1' if chain else "applies only to resolution='chain' (under "
                    "'native' stitches resample to each block's own size)"))
            try:
                zm = cache[b['model']]
                i, j = zm.index(b['start']), zm.index(b['end'])
            except (KeyError, IndexError, ValueError) as e:  # ZooError is a ValueError
                raise ConfigError(
                    f'block {k} {dict(b)} does not fit the zoo ({e.args[0] if e.args else e}); the assembly '
                    '(assembly.json) was made with another zoo or edited by hand: rerun tools/assemble.py') from None
            if i > j:
                raise ConfigError(f'block {k}: start {zm.nodes[i]} comes after end {zm.nodes[j]} in {zm.name}')
            self.specs.append(dict(model=zm.name, start=zm.nodes[i], end=zm.nodes[j], start_idx=i, end_idx=j,
                                   stride=stride))
        # every block its own weights: a node already in an earlier block is copied
        cuts, used = [], {}
        for s in self.specs:
            nodes = set(range(s['start_idx'], s['end_idx'] + 1))
            seen = used.setdefault(s['model'], set())
            cuts.append(cache[s['model']].cut(s['start_idx'], s['end_idx'], copy=bool(nodes & seen)))
            seen |= nodes
        self.blocks = nn.ModuleList(cuts)
        first = cache[self.specs[0]['model']]
        self.stem_type = self.stem_cfg['type']
        if self.stem_type == 'source':
            if self.specs[0]['start_idx'] != 0:
                # the source stem feeds node 0: run the source model's earlier nodes too
                raise ConfigError(
                    f"stem='source' needs the first block to start at the first node of "
                    f"{first.name} ({first.nodes[0]}), not {self.specs[0]['start']}; use stem='resnet'")
            if self.specs[0]['stride'] not in (None, 1):
                raise ConfigError(f"block 0: stride {self.specs[0]['stride']} but the source stem feeds it "
                                  "directly (no stitch); a fresh stem (stem=dict(type='resnet', ...)) can have one")
            self.stem = first.stem()
            self.stem.flops = first.stem_flops()
            cur = first.in_spec(0)
        else:
            self.stem = resnet_stem(self.stem_cfg['channels'])
            cur = resnet_stem_spec(self.stem_cfg['channels'], self.input_size)
        self.stem_spec = cur
        self.stem_stitch = None
        self.stitches = nn.ModuleList()
        self.stitch_specs = []
        for k, s in enumerate(self.specs):
            zm = cache[s['model']]
            own = zm.in_spec(s['start_idx'])
            if k == 0:
                fits = (cur.family == own.family and cur.channels == own.channels
                        and (chain or cur.grid == own.grid))
                need = self.stem_type == 'resnet' and not (fits and s['stride'] in (None, 1))
            else:
                a = self.specs[k - 1]
                consecutive = a['model'] == s['model'] and a['end_idx'] + 1 == s['start_idx']
                need = not consecutive or self.stitch_consecutive
                if not need and s['stride'] not in (None, 1):
                    raise ConfigError(f"block {k}: stride {s['stride']} but no stitch in front of it (it continues "
                                      f'block {k - 1} of the same model; set stitch_consecutive=True for one)')
            if need:
                stride = None
                dst = own
                if chain:
                    stride = s['stride'] if s['stride'] is not None else chain_stride(cur.grid, own.grid)
                    dst = own.with_grid(cur.grid[0] // stride, cur.grid[1] // stride)
                init = 'random' if k == 0 else stitch_init
                layer = build_stitch(self.stitch_cfg, cur, dst, init=init, stride=stride)
                if k == 0:
                    self.stem_stitch = layer
                else:
                    self.stitches.append(layer)
                    self.stitch_specs.append(dict(index=k, src=self.specs[k - 1]['model'], dst=s['model']))
                cur = dst
            elif k > 0:
                self.stitches.append(nn.Identity())
                self.stitch_specs.append(None)
            if not chain:
                cur = own
            elif k == 0 and self.stem_type == 'source':
                cur = own
            self.in_specs.append(cur)
            cur = zm.cut_at(s['start_idx'], s['end_idx'], cur.grid, flops=False)[0] if chain \
                else zm.out_spec(s['end_idx'])
            self.out_specs.append(cur)
        n = len(self.blocks)
        self.out_indices = sorted({i % n for i in out_indices})
        self.out_norms = nn.ModuleDict()
        if out_norm:
            for i in self.out_indices:
                if self.out_specs[i].family in ('vit', 'swin'):
                    self.out_norms[str(i)] = nn.LayerNorm(self.out_specs[i].channels)
        if frozen_blocks is True:
            frozen_blocks = list(range(n))
        self.frozen_blocks = sorted({i % n for i in (frozen_blocks or [])})
        self._freeze()

    def init_weights(self):
        """Only ``init_cfg`` (e.g. ``Pretrained`` assembled_init.pth) is applied.

        Blocks and stems carry zoo weights; their own ``init_weights`` (timm's
        ViT, mmpretrain's transformer layers) would overwrite them, so the
        children are not re-initialised. Stitches keep their construction init.
        A ``Pretrained`` file must fit this network exactly (same blocks, every
        key and shape), else one line says what does not fit: mmengine's own
        loader would load what fits and warn about the rest.
        """
        from mmengine.model.weight_init import initialize
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self._load_pretrained(cfg['checkpoint'], cfg.get('prefix', ''))
        elif cfg:
            initialize(self, cfg)
        self._is_init = True

    def _load_pretrained(self, path, prefix=''):
        from dery.errors import CheckpointError
        from dery.utils import safe_torch_load
        from dery.utils.checkpoint import check_state_dict, state_dict_of
        ckpt = safe_torch_load(path)
        network = 'this ReassembledBackbone (' + self.extra_repr() + ')'
        meta = ckpt.get('meta') or {} if isinstance(ckpt, dict) else {}
        blocks = [dict(model=s['model'], start=s['start'], end=s['end']) for s in self.specs]
        if meta.get('dery') == 'assembled_init' and meta.get('blocks') not in (None, blocks):
            raise CheckpointError(f'{path} holds the weights of other blocks ({meta["blocks"]}) than {network}; '
                                  'it belongs to another assembly: rerun tools/assemble.py or point init_cfg at '
                                  "that assembly's work dir")
        state = state_dict_of(ckpt)
        check_state_dict(self, state, path, network, prefix=prefix,
                         fix='Rerun tools/assemble.py (its assembled_init.pth belongs to its assembly.json)')
        self.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)

    # ---------------------------------------------------------------- train
    def _freeze(self):
        for i in self.frozen_blocks:
            self.blocks[i].eval()
            for p in self.blocks[i].parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze()
        return self

    def forward(self, x):
        x = self.stem(x)
        if self.stem_stitch is not None:
            x = self.stem_stitch(x)
        outs = []
        for k, block in enumerate(self.blocks):
            if k > 0:
                x = self.stitches[k - 1](x)
            x = block(x)
            if k in self.out_indices:
                y = self.out_norms[str(k)](x) if str(k) in self.out_norms else x
                outs.append(self.out_specs[k].to_nchw(y))
        return tuple(outs)

    # ---------------------------------------------------------------- stitches
    @torch.no_grad()
    def fit_stitches(self, zoo_models, images, batch_size=16, features=None):
        """Least-squares fit of every stitch on probe ``images``.

        ``zoo_models``: a :class:`~dery.zoo.ZooCache` or name ->
        :class:`~dery.zoo.ZooModel` (pretrained, as the blocks). For the stitch
        into block k the source is block k-1's output in its own model and the
        target is what block k's first node receives in its own model, both on
        the same images. ``features`` (name -> :class:`~dery.zoo.NodeFeatures`)
        skips the forward passes. Returns the relative errors.
        """
        if features is None:
            features = capture_node_features(zoo_models, sorted({s['model'] for s in self.specs}), images,
                                             batch_size)
        errors = []
        for k, stitch in enumerate(self.stitches, start=1):
            if not isinstance(stitch, StitchLayer):
                errors.append(0.0)
                continue
            a, b = self.specs[k - 1], self.specs[k]
            x = features[a['model']].output_of(a['end'])
            y = features[b['model']].input_of(b['start_idx'])
            errors.append(stitch.fit(x, y))
        return errors

    def extra_repr(self):
        parts = [f"{s['model']}[{s['start']}..{s['end']}]" for s in self.specs]
        return 'blocks=' + ' -> '.join(parts)
