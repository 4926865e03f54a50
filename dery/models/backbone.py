"""``ReassembledBackbone``: zoo blocks stitched in stage order."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule

from dery.errors import ConfigError
from dery.registry import MODELS
from dery.zoo import TensorSpec, ZooCache, capture_node_features
from .stitch import StitchLayer


def _resnet_stem(out_channels=64):
    """The original DeRy code's fresh stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))


@MODELS.register_module()
class ReassembledBackbone(BaseModule):
    """A network reassembled from zoo blocks (DeRy, step 5).

    Args:
        blocks (list[dict]): in stage order, ``dict(model=zoo name, start=node,
            end=node)`` (node names or indices).
        zoo (str | list | dict | ZooCache | None): ``model_zoo.yml`` path, or
            inline entries (list of entry dicts, or name -> entry); None: the
            default zoo file. From Python, a :class:`~dery.zoo.ZooCache` whose
            built models the blocks share (``pretrained`` and ``input_size``
            are then the cache's).
        pretrained (bool): take the blocks' (and stem's) weights from the zoo.
            False builds the architecture only (e.g. when ``init_cfg`` loads
            ``assembled_init.pth``).
        input_size (tuple): ``(C, H, W)`` the shapes are probed at.
        stem (str): ``'source'`` (the first block's model stem with its weights)
            or ``'resnet'`` (a fresh ResNet stem and a stitch, as the original
            code).
        stitch_init (str): ``'lstsq'`` (fit with :meth:`fit_stitches`; random
            until then) or ``'random'``.
        frozen_blocks (bool | list[int]): blocks kept frozen (FZ protocol):
            no gradients, norm layers in eval mode.
        out_indices (sequence[int]): blocks whose outputs are returned, as
            ``[B, C, H, W]`` maps whatever the family (tokens without prefix
            tokens, reshaped to their grid).
        out_norm (bool): a LayerNorm on transformer outputs before they are
            returned (the source models' final norms belong to their heads).
    """

    def __init__(self, blocks, zoo=None, pretrained=True, input_size=(3, 224, 224), stem='source',
                 stitch_init='lstsq', frozen_blocks=False, out_indices=(-1, ), out_norm=True,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not blocks:
            raise ConfigError('ReassembledBackbone needs at least one block')
        if stem not in ('source', 'resnet'):
            raise ConfigError(f"stem must be 'source' or 'resnet', got {stem!r}")
        cache = zoo if isinstance(zoo, ZooCache) else ZooCache(zoo, pretrained, input_size)
        self.block_cfgs = [dict(b) for b in blocks]
        self.input_size = tuple(cache.input_size if isinstance(zoo, ZooCache) else input_size)
        self.in_specs, self.out_specs, self.specs = [], [], []
        cuts = []
        for k, b in enumerate(self.block_cfgs):
            try:
                zm = cache[b['model']]
                i, j = zm.index(b['start']), zm.index(b['end'])
            except (KeyError, IndexError, ValueError) as e:  # ZooError is a ValueError
                raise ConfigError(
                    f'block {k} {dict(b)} does not fit the zoo ({e.args[0] if e.args else e}); the assembly '
                    '(assembly.json) was made with another zoo or edited by hand: rerun tools/assemble.py') from None
            if i > j:
                raise ConfigError(f'block {k}: start {zm.nodes[i]} comes after end {zm.nodes[j]} in {zm.name}')
            cuts.append(zm.cut(i, j))
            self.in_specs.append(zm.in_spec(i))
            self.out_specs.append(zm.out_spec(j))
            self.specs.append(dict(model=zm.name, start=zm.nodes[i], end=zm.nodes[j], start_idx=i, end_idx=j))
        self.blocks = nn.ModuleList(cuts)
        first = cache[self.block_cfgs[0]['model']]
        self.stem_type = stem
        if stem == 'source':
            if self.specs[0]['start_idx'] != 0:
                # the source stem feeds node 0: run the source model's earlier nodes too
                raise ConfigError(
                    f"stem='source' needs the first block to start at the first node of "
                    f"{first.name} ({first.nodes[0]}), not {self.specs[0]['start']}; use stem='resnet'")
            self.stem = first.stem()
            self.stem.flops = first.stem_flops()
            self.stem_stitch = None
        else:
            self.stem = _resnet_stem()
            h = self.input_size[1] // 4
            self.stem_stitch = StitchLayer.from_specs(TensorSpec('cnn', (64, h, h)), self.in_specs[0], init='random')
        self.stitches = nn.ModuleList()
        self.stitch_specs = []
        for k in range(1, len(self.specs)):
            a, b = self.specs[k - 1], self.specs[k]
            if a['model'] == b['model'] and a['end_idx'] + 1 == b['start_idx']:
                self.stitches.append(nn.Identity())
                self.stitch_specs.append(None)
                continue
            self.stitches.append(StitchLayer.from_specs(self.out_specs[k - 1], self.in_specs[k],
                                                        init=stitch_init))
            self.stitch_specs.append(dict(index=k, src=a['model'], dst=b['model']))
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
