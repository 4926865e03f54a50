"""``ReassembledBackbone``: zoo blocks stitched in stage order."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule

from dery.registry import MODELS
from dery.zoo import build_zoo_model, load_zoo, resolve_entry
from dery.zoo.dissect import Stem
from .stitch import StitchLayer


def _resnet_stem(out_channels=64):
    """The original DeRy code's fresh stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))


def _to_nchw(x, family, prefix):
    if family == 'cnn':
        return x
    if family == 'swin':
        return x.permute(0, 3, 1, 2).contiguous()
    tokens = x[:, prefix:]
    b, n, c = tokens.shape
    side = int(round(int(n)**0.5))
    return tokens.transpose(1, 2).reshape(b, c, side, int(n) // side)


class ZooCache:
    """Builds each zoo model once per assembly (shapes, stems and cuts share it)."""

    def __init__(self, zoo=None, pretrained=True, input_size=(3, 224, 224)):
        if isinstance(zoo, str) or zoo is None:
            self.entries = load_zoo(zoo) if zoo else None
        elif isinstance(zoo, dict):
            self.entries = {k: resolve_entry(dict(v, name=k)) for k, v in zoo.items()}
        else:
            self.entries = {e['name']: resolve_entry(dict(e)) for e in zoo}
        self.pretrained = pretrained
        self.input_size = tuple(input_size)
        self.models = {}

    def add(self, zoo_model):
        self.models[zoo_model.name] = zoo_model

    def __getitem__(self, name):
        if name not in self.models:
            entries = self.entries if self.entries is not None else load_zoo()
            zm = build_zoo_model(resolve_entry(name, entries), pretrained=self.pretrained)
            zm.input_size = self.input_size
            self.models[name] = zm
        return self.models[name]


@MODELS.register_module()
class ReassembledBackbone(BaseModule):
    """A network reassembled from zoo blocks (DeRy, step 5).

    Args:
        blocks (list[dict]): in stage order, ``dict(model=zoo name, start=node,
            end=node)`` (node names or indices).
        zoo (str | list | dict | None): ``model_zoo.yml`` path, or inline entries
            (list of entry dicts, or name -> entry); None: the default zoo file.
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
                 init_cfg=None, _zoo_cache=None):
        super().__init__(init_cfg=init_cfg)
        if not blocks:
            raise ValueError('ReassembledBackbone needs at least one block')
        if stem not in ('source', 'resnet'):
            raise ValueError(f"stem must be 'source' or 'resnet', got {stem!r}")
        cache = _zoo_cache or ZooCache(zoo, pretrained, input_size)
        self.block_cfgs = [dict(b) for b in blocks]
        self.input_size = tuple(input_size)
        self.families, self.prefixes, self.specs = [], [], []
        cuts = []
        for k, b in enumerate(self.block_cfgs):
            try:
                zm = cache[b['model']]
                i, j = zm.index(b['start']), zm.index(b['end'])
            except (KeyError, IndexError, ValueError) as e:  # ZooError is a ValueError
                raise ValueError(
                    f'block {k} {dict(b)} does not fit the zoo ({e.args[0] if e.args else e}); the assembly '
                    '(assembly.json) was made with another zoo or edited by hand: rerun tools/assemble.py') from None
            if i > j:
                raise ValueError(f'block {k}: start {zm.nodes[i]} comes after end {zm.nodes[j]} in {zm.name}')
            cuts.append(zm.cut(i, j))
            self.families.append(zm.family)
            self.prefixes.append(zm.num_prefix_tokens)
            self.specs.append(dict(model=zm.name, start=zm.nodes[i], end=zm.nodes[j], start_idx=i, end_idx=j,
                                   in_shape=list(zm.shapes(i)[0]), out_shape=list(zm.shapes(j)[1])))
        self.blocks = nn.ModuleList(cuts)
        first = cache[self.block_cfgs[0]['model']]
        self.stem_type = stem
        if stem == 'source':
            if self.specs[0]['start_idx'] != 0:
                # the source stem feeds node 0: run the source model's earlier nodes too
                raise ValueError(
                    f"stem='source' needs the first block to start at the first node of "
                    f"{first.name} ({first.nodes[0]}), not {self.specs[0]['start']}; use stem='resnet'")
            self.stem = first.stem()
            self.stem.flops = first.stem_flops()
            self.stem_stitch = None
        else:
            self.stem = _resnet_stem()
            h = self.input_size[1] // 4
            self.stem_stitch = StitchLayer('cnn', (64, h, h), self.families[0], self.specs[0]['in_shape'],
                                           0, self.prefixes[0], init='random')
        self.stitches = nn.ModuleList()
        self.stitch_specs = []
        for k in range(1, len(self.specs)):
            a, b = self.specs[k - 1], self.specs[k]
            if a['model'] == b['model'] and a['end_idx'] + 1 == b['start_idx']:
                self.stitches.append(nn.Identity())
                self.stitch_specs.append(None)
                continue
            self.stitches.append(StitchLayer(self.families[k - 1], a['out_shape'], self.families[k],
                                             b['in_shape'], self.prefixes[k - 1], self.prefixes[k],
                                             init=stitch_init))
            self.stitch_specs.append(dict(index=k, src=a['model'], dst=b['model']))
        n = len(self.blocks)
        self.out_indices = sorted({i % n for i in out_indices})
        self.out_norms = nn.ModuleDict()
        if out_norm:
            for i in self.out_indices:
                if self.families[i] in ('vit', 'swin'):
                    dim = self.specs[i]['out_shape'][-1]
                    self.out_norms[str(i)] = nn.LayerNorm(dim)
        if frozen_blocks is True:
            frozen_blocks = list(range(n))
        self.frozen_blocks = sorted({i % n for i in (frozen_blocks or [])})
        self._freeze()

    def init_weights(self):
        """Only ``init_cfg`` (e.g. ``Pretrained`` assembled_init.pth) is applied.

        Blocks and stems carry zoo weights; their own ``init_weights`` (timm's
        ViT, mmpretrain's transformer layers) would overwrite them, so the
        children are not re-initialised. Stitches keep their construction init.
        """
        from mmengine.model.weight_init import initialize
        if self.init_cfg:
            initialize(self, self.init_cfg)
        self._is_init = True

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
                outs.append(_to_nchw(y, self.families[k], self.prefixes[k]))
        return tuple(outs)

    # ---------------------------------------------------------------- stitches
    @torch.no_grad()
    def fit_stitches(self, zoo_models, images, batch_size=16, features=None):
        """Least-squares fit of every stitch on probe ``images``.

        ``zoo_models``: name -> :class:`~dery.zoo.ZooModel` (pretrained, as the
        blocks). For the stitch into block k the source is block k-1's output in
        its own model and the target is what block k's first node receives in
        its own model, both on the same images. ``features`` (from
        :func:`dery.apis.assemble.stitch_features`) skips the forward passes.
        Returns the relative errors.
        """
        if features is None:
            from dery.apis.assemble import stitch_features
            features = stitch_features(zoo_models, {s['model'] for s in self.specs}, images, batch_size)
        feats = features
        errors = []
        for k, stitch in enumerate(self.stitches, start=1):
            if not isinstance(stitch, StitchLayer):
                errors.append(0.0)
                continue
            a, b = self.specs[k - 1], self.specs[k]
            x = feats[a['model']]['outs'][a['end']]
            fb = feats[b['model']]
            y = fb['stem'] if b['start_idx'] == 0 else fb['outs'][fb['nodes'][b['start_idx'] - 1]]
            errors.append(stitch.fit(x, y))
        return errors

    def extra_repr(self):
        parts = [f"{s['model']}[{s['start']}..{s['end']}]" for s in self.specs]
        return 'blocks=' + ' -> '.join(parts)
