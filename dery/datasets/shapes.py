"""A second procedural target task: geometric shapes, with a factorised label (shape x fill).

Each image holds one shape drawn by a program: an ellipse, a triangle, a
rectangle or a cross (``shape``), either as an outline or filled (``fill``);
the class is the pair, ``label = 2 * shape + fill`` (8 classes), so the label
has two independent factors, unlike the digits' ten unrelated classes and the
glyphs' sixteen. Every sample draws its own size, aspect ratio, rotation,
position, stroke width, colours (the scheme of
:func:`dery.datasets.procedural.random_colours`) and noise, and half the
samples make a low-resolution round trip (blur), as the glyphs do. The shapes
are not glyphs: a model pre-trained on glyph strokes must still learn area
(filled or not) and corners (polygon or ellipse) from a small training set.

Generation is deterministic in the arguments (``seed``, ``split``, ``num_samples``).
"""
import functools

import numpy as np
from mmpretrain.datasets import BaseDataset

from dery.errors import ConfigError
from dery.registry import DATASETS

__all__ = ['ProceduralShapesDataset', 'render_shapes', 'SHAPES', 'FILLS']

SHAPES = ('ellipse', 'triangle', 'rectangle', 'cross')
FILLS = ('outline', 'filled')


def _outline(kind, rng):
    """The shape's boundary in the unit disc (before the affine map), ``[P, 2]``."""
    if kind == 'ellipse':
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == 'triangle':
        a = np.deg2rad(90 + np.array([0, 120, 240]) + rng.normal(0, 8, 3))
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == 'rectangle':
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8
    w = rng.uniform(0.28, 0.4)  # cross: a plus sign of arm width w
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                     [-1, -w], [-w, -w]], float)


def render_shapes(num_samples, image_size=16, seed=0, split='train', supersample=4):
    """``(images uint8 [N, H, W, 3], labels int64 [N])``; labels balanced (``i % 8``)."""
    from PIL import Image, ImageDraw

    from .procedural import random_colours
    rng = np.random.default_rng([seed, 5151, 0 if split == 'train' else 1])
    n, size = int(num_samples), int(image_size)
    labels = np.arange(n) % (len(SHAPES) * len(FILLS))
    big = size * supersample
    ink = np.empty((n, size, size), np.float32)
    for i in range(n):
        kind, filled = SHAPES[labels[i] // 2], labels[i] % 2 == 1
        pts = _outline(kind, rng)
        radius = rng.uniform(0.28, 0.42) * size
        aspect = np.exp(rng.normal(0, 0.18))
        angle = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = (pts * [aspect, 1 / aspect]) @ rot.T * radius
        pts = pts + size / 2 + rng.uniform(-0.12, 0.12, 2) * size
        canvas = Image.new('L', (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        poly = [tuple(p) for p in (pts * supersample).tolist()]
        if filled:
            draw.polygon(poly, fill=255)
        else:
            width = max(1, int(round(rng.uniform(1.0, 1.8) * size / 16 * supersample)))
            draw.line(poly + [poly[0]], fill=255, width=width, joint='curve')
        ink[i] = np.asarray(canvas.resize((size, size), Image.BOX), np.float32) / 255.0
    lowres = rng.random(n) < 0.5
    if lowres.any():
        import torch
        import torch.nn.functional as F
        idx = np.nonzero(lowres)[0]
        t = torch.from_numpy(ink[idx])[:, None]
        ink[idx] = F.interpolate(F.avg_pool2d(t, 2), size=(size, size), mode='bilinear',
                                 align_corners=False)[:, 0].numpy()
    bg, fg, _ = random_colours(rng, n)
    img = bg + (fg - bg) * ink[..., None]
    img = img + rng.normal(0, 1, size=img.shape) * rng.uniform(0, 12, size=(n, 1, 1, 1))
    return np.clip(img, 0, 255).round().astype(np.uint8), labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _cached(num_samples, image_size, seed, split):
    images, labels = render_shapes(num_samples, image_size, seed, split)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


@DATASETS.register_module()
class ProceduralShapesDataset(BaseDataset):
    """Procedurally drawn shapes; 8 classes = 4 shapes x {outline, filled} (``label = 2 * shape + fill``).

    Args:
        split (str): ``'train'`` or ``'test'`` (other drawings, same classes).
        num_samples (int | None): images (balanced); default 160 for ``train`` (20 per class), 800 for
            ``test``.
        image_size (int): height and width.
        seed (int): the generator seed.
        pipeline (list): mmpretrain transforms.
    """

    METAINFO = dict(classes=[f'{s}_{f}' for s in SHAPES for f in FILLS])

    def __init__(self, split='train', num_samples=None, image_size=16, seed=0, pipeline=(), **kwargs):
        if split not in ('train', 'test'):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        num_samples = (160 if split == 'train' else 800) if num_samples is None else int(num_samples)
        if num_samples < 1 or int(image_size) < 8:
            raise ConfigError(f'ProceduralShapesDataset needs num_samples >= 1 and image_size >= 8; got '
                              f'{num_samples}, {image_size}')
        self.split, self.num_samples, self.image_size, self.seed = split, num_samples, int(image_size), int(seed)
        super().__init__(ann_file='', metainfo=dict(self.METAINFO), data_root='', pipeline=list(pipeline),
                         lazy_init=False, **kwargs)

    def load_data_list(self):
        images, labels = _cached(self.num_samples, self.image_size, self.seed, self.split)
        shape = images.shape[1:3]
        return [dict(img=img, gt_label=int(label), img_shape=shape, ori_shape=shape)
                for img, label in zip(images, labels)]
