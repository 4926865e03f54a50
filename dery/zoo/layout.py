"""One vocabulary for the tensors that flow between nodes (as timm's ``layers/format.py``).

Every zoo model family keeps its own layout between nodes; DeRy never
transposes a model's internals, it converts at the seams (stitches, pooling,
the backbone's outputs) with the functions here, and nowhere else:

=========  ======================  =============================================
family     layout (per batch)      notes
=========  ======================  =============================================
``cnn``    ``[B, C, H, W]``        torch's channels-first maps
``vit``    ``[B, N, C]``           ``prefix_tokens`` class/register tokens first,
                                   then ``H * W`` patch tokens of a square grid
``swin``   ``[B, H, W, C]``        channels-last maps (timm and mmpretrain Swin)
=========  ======================  =============================================

:class:`TensorSpec` is the typed per-node contract (family, per-sample shape,
prefix tokens), as detectron2's ``ShapeSpec`` or timm's ``FeatureInfo``:
:meth:`dery.zoo.ZooModel.in_spec` / :meth:`~dery.zoo.ZooModel.out_spec` return
it, and stitches, feature capture, proxies and the reassembled backbone consume
it.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import torch

from dery.errors import ConfigError

#: The layout families of zoo models.
FAMILIES = ('cnn', 'vit', 'swin')
#: How a node output becomes one vector per sample (see :func:`pool`).
POOLINGS = ('avg', 'avg_patch', 'max', 'flatten')


def check_family(family, what='family'):
    if family not in FAMILIES:
        raise ConfigError(f'{what} must be one of {", ".join(FAMILIES)}, got {family!r}')
    return family


def grid_of(shape, family, prefix_tokens=0):
    """``(channels, H, W)`` of a per-sample canonical ``shape``."""
    check_family(family)
    if family == 'cnn':
        c, h, w = shape
    elif family == 'swin':
        h, w, c = shape
    else:
        n, c = shape
        side = int(round(math.sqrt(n - prefix_tokens)))
        if side * side != n - prefix_tokens:
            raise ConfigError(f'vit tokens {n} - {prefix_tokens} prefix tokens do not form a square grid')
        h = w = side
    return int(c), int(h), int(w)


def to_map(x, family, prefix_tokens=0):
    """``(map [B, C, H, W], prefix tokens [B, P, C] or None)`` of a batch in ``family`` layout.

    ViT patch tokens are reshaped to their square grid (the side is taken from
    the token count at run time, so any resolution works).
    """
    if family == 'cnn':
        return x, None
    if family == 'swin':
        return x.permute(0, 3, 1, 2), None
    check_family(family)
    prefix, tokens = x[:, :prefix_tokens], x[:, prefix_tokens:]
    b, n, c = tokens.shape
    side = int(round(int(n)**0.5))
    return tokens.transpose(1, 2).reshape(b, c, side, int(n) // side), (prefix if prefix_tokens else None)


def from_map(m, family, prefix=None, prefix_tokens=0):
    """A ``[B, C, H, W]`` map in ``family`` layout.

    ViT: the map's positions become patch tokens; ``prefix_tokens`` prefix
    tokens go in front: ``prefix`` when given (``[B, P, C]``), else the mean of
    the patch tokens.
    """
    if family == 'cnn':
        return m
    if family == 'swin':
        return m.permute(0, 2, 3, 1)
    check_family(family)
    tokens = m.flatten(2).transpose(1, 2)
    if not prefix_tokens:
        return tokens
    if prefix is None:
        prefix = tokens.mean(1, keepdim=True).expand(-1, prefix_tokens, -1)
    return torch.cat([prefix, tokens], dim=1)


def to_nchw(x, family, prefix_tokens=0):
    """The ``[B, C, H, W]`` map of a batch (prefix tokens dropped): what necks and heads take."""
    m, _ = to_map(x, family, prefix_tokens)
    return m.contiguous() if family == 'swin' else m


def pool(x, family, pooling='avg', prefix_tokens=0):
    """One vector per sample from a batch in ``family`` layout.

    ``cnn`` ``[B, C, H, W]`` and ``swin`` ``[B, H, W, C]``: mean (``'max'``:
    max) over ``H, W``. ``vit`` ``[B, N, C]``: over the tokens; ``'avg'``
    averages *all* tokens, class/register tokens included (the original DeRy
    code's choice), ``'avg_patch'`` only the patch tokens. ``'flatten'`` keeps
    everything (``[B, prod(shape)]``). A ``[B, C]`` input is returned as is.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    b = x.shape[0]
    if pooling == 'flatten' or x.dim() <= 2:
        return x.reshape(b, -1)
    if x.dim() == 3:  # tokens [B, N, C]
        if pooling == 'avg_patch' and prefix_tokens and x.shape[1] > prefix_tokens:
            x = x[:, prefix_tokens:]
        dims = (1, )
    elif family == 'swin' and x.dim() == 4:  # [B, H, W, C]
        dims = (1, 2)
    else:  # channels first [B, C, *spatial]
        dims = tuple(range(2, x.dim()))
    return x.amax(dim=dims) if pooling == 'max' else x.mean(dim=dims)


@dataclass(frozen=True)
class TensorSpec:
    """The shape contract of a tensor between nodes: family, per-sample shape, prefix tokens.

    Args:
        family: ``cnn``, ``vit`` or ``swin``.
        shape: per-sample shape in the family's layout: ``(C, H, W)``,
            ``(N, C)`` (prefix tokens included) or ``(H, W, C)``.
        prefix_tokens: class/register tokens in front of a ViT's patch
            tokens (0 for maps).
    """
    family: str
    shape: Tuple[int, ...]
    prefix_tokens: int = 0

    def __post_init__(self):
        check_family(self.family)
        object.__setattr__(self, 'shape', tuple(int(s) for s in self.shape))
        object.__setattr__(self, 'prefix_tokens', int(self.prefix_tokens) if self.family == 'vit' else 0)
        want = 2 if self.family == 'vit' else 3
        if len(self.shape) != want:
            raise ConfigError(f'a {self.family} tensor has {want} per-sample dims, got shape {self.shape}')

    # ------------------------------------------------------------ sizes
    @property
    def channels(self) -> int:
        return self.shape[0] if self.family == 'cnn' else self.shape[-1]

    @property
    def grid(self) -> Tuple[int, int]:
        """``(H, W)`` of the map (ViT: of the patch-token grid)."""
        _, h, w = grid_of(self.shape, self.family, self.prefix_tokens)
        return h, w

    def with_grid(self, h, w) -> 'TensorSpec':
        """The same tensor at another spatial size."""
        c = self.channels
        if self.family == 'cnn':
            shape = (c, h, w)
        elif self.family == 'swin':
            shape = (h, w, c)
        else:
            if h != w:
                raise ConfigError(f'vit patch grids are square, got {h} x {w}')
            shape = (self.prefix_tokens + h * w, c)
        return TensorSpec(self.family, shape, self.prefix_tokens)

    # ------------------------------------------------------------ conversions
    def to_map(self, x):
        return to_map(x, self.family, self.prefix_tokens)

    def from_map(self, m, prefix=None):
        return from_map(m, self.family, prefix, self.prefix_tokens)

    def to_nchw(self, x):
        return to_nchw(x, self.family, self.prefix_tokens)

    def pool(self, x, pooling='avg'):
        return pool(x, self.family, pooling, self.prefix_tokens)

    def zeros(self, batch=1, **kwargs):
        return torch.zeros((batch, ) + self.shape, **kwargs)

    # ------------------------------------------------------------ records
    def to_dict(self) -> dict:
        return dict(family=self.family, shape=list(self.shape), prefix_tokens=self.prefix_tokens)

    @classmethod
    def from_dict(cls, d: dict) -> 'TensorSpec':
        return cls(d['family'], tuple(d['shape']), d.get('prefix_tokens', 0))

    def __str__(self):
        tokens = f'+{self.prefix_tokens}' if self.prefix_tokens else ''
        return f'{self.family}{list(self.shape)}{tokens}'


__all__ = ['FAMILIES', 'POOLINGS', 'TensorSpec', 'check_family', 'grid_of', 'to_map', 'from_map',
           'to_nchw', 'pool']
