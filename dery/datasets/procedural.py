"""Formula-driven source data: procedurally rendered glyph classes (no download).

Formula-driven supervised pre-training (FractalDB, Kataoka et al. 2020; glyph
and shape renderers after it) learns transferable low-level features from
images that a program draws. Here each class is a *glyph*: 2-3 cubic Bezier
strokes (some closed into loops) drawn from a per-class generator; every
sample of the class redraws it with jittered control points, a random affine
map (rotation, scale, shear, shift), stroke width, random colours (bright ink
of any hue on a dark ground, one in five the other way round), noise and, for
some samples, a low-resolution round trip (blur). So the classes are
learnable only from stroke shape, which is what a handwriting task needs
later, whatever its colours, while the classes themselves (random glyphs) are
unrelated to any target task.

Generation is deterministic in the arguments; with ``cache_dir`` the arrays
are stored as ``glyphs_<digest>.npz`` and loaded by later runs.
"""
import hashlib
import json
import os
import os.path as osp

import numpy as np
from mmpretrain.datasets import BaseDataset

from dery.errors import ConfigError
from dery.registry import DATASETS

_FORMAT = 1  # bump when the renderer changes: cached files are keyed on it


def random_colours(rng, n):
    """Random hues, bright ink on a dark ground (one in five the other way round): ``(bg, fg, swapped)``.

    ``bg``, ``fg``: ``[n, 1, 1, 3]`` in 0..255. Shared by the glyphs and the
    ``colour`` style of :class:`~dery.datasets.SklearnDigitsDataset`.
    """
    bg = rng.uniform(0, 90, size=(n, 1, 1, 3))
    fg = rng.uniform(150, 255, size=(n, 1, 1, 3))
    swap = rng.random(n) < 0.2
    bg[swap], fg[swap] = 255 - bg[swap], 255 - fg[swap]
    return bg, fg, swap


def glyph_templates(num_classes, seed):
    """``[num_classes][strokes][4, 2]`` control points in the unit square, one glyph per class."""
    templates = []
    for c in range(num_classes):
        rng = np.random.default_rng([seed, 7919, c])
        strokes = []
        for _ in range(int(rng.integers(2, 4))):
            ctrl = rng.uniform(0.15, 0.85, size=(4, 2))
            if rng.random() < 0.3:  # a closed loop: ends meet, handles on opposite sides
                ctrl[3] = ctrl[0]
                mid = ctrl[0] + rng.uniform(-0.3, 0.3, size=2)
                normal = rng.normal(size=2)
                normal = normal / (np.linalg.norm(normal) + 1e-9) * rng.uniform(0.25, 0.4)
                ctrl[1], ctrl[2] = mid + normal, mid - normal
                ctrl = np.clip(ctrl, 0.05, 0.95)
            strokes.append(ctrl)
        templates.append(strokes)
    return templates


def _draw(strokes_px, width, size, supersample=4):
    """Anti-aliased ink ``[size, size]`` in 0..1: polylines drawn on a supersampled canvas, box-filtered."""
    from PIL import Image, ImageDraw
    big = size * supersample
    canvas = Image.new('L', (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(width * supersample)))
    r = w / 2
    for pts in strokes_px:
        pts = pts * supersample
        draw.line(pts.ravel().tolist(), fill=255, width=w)
        for x, y in pts[::3].tolist() + [pts[-1].tolist()]:  # round joints and caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_glyphs(num_samples, num_classes=16, image_size=32, seed=0, split='train', points=16):
    """``(images uint8 [N, H, W, 3], labels int64 [N])``; label ``i % num_classes``."""
    templates = glyph_templates(num_classes, seed)
    rng = np.random.default_rng([seed, 0 if split == 'train' else 1])
    size, n = image_size, num_samples
    labels = np.arange(n) % num_classes
    max_strokes = max(len(t) for t in templates)
    # every random draw up front, vectorised
    angle = rng.normal(0, np.deg2rad(12), size=n)
    scale = rng.uniform(0.75, 1.05, size=(n, 1)) * np.exp(rng.normal(0, 0.08, size=(n, 2)))
    shear = rng.normal(0, 0.15, size=n)
    shift = rng.uniform(-0.08, 0.08, size=(n, 1, 2))
    jitter = rng.normal(0, 0.03, size=(n, max_strokes, 4, 2))
    width = rng.uniform(1.4, 3.2, size=n) * size / 32
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    sh = np.zeros((n, 2, 2))
    sh[:, 0, 0] = sh[:, 1, 1] = 1.0
    sh[:, 0, 1] = shear
    affine = rot @ sh @ (np.eye(2)[None] * scale[:, None, :])  # [n, 2, 2]
    t = np.linspace(0.0, 1.0, points)[:, None]
    basis = np.concatenate([(1 - t)**3, 3 * (1 - t)**2 * t, 3 * (1 - t) * t**2, t**3], 1)  # [points, 4]
    ink = np.empty((n, size, size), np.float32)
    for i in range(n):
        polylines = []
        for k, ctrl in enumerate(templates[labels[i]]):
            pts = basis @ (ctrl + jitter[i, k])  # [points, 2]
            polylines.append(((pts - 0.5) @ affine[i].T + 0.5 + shift[i]) * size)
        ink[i] = _draw(polylines, width[i], size)
    # a low-resolution round trip for ~half the samples (blurred strokes, as in scanned digits)
    lowres = rng.random(num_samples) < 0.5
    factors = rng.choice([2, 4], size=num_samples)
    if lowres.any():
        import torch
        import torch.nn.functional as F
        for f in (2, 4):
            idx = np.nonzero(lowres & (factors == f))[0]
            if len(idx):
                t = torch.from_numpy(ink[idx])[:, None]
                small = F.avg_pool2d(t, f)
                ink[idx] = F.interpolate(small, size=(size, size), mode='bilinear',
                                         align_corners=False)[:, 0].numpy()
    bg, fg, _ = random_colours(rng, num_samples)
    img = bg + (fg - bg) * ink[..., None]
    img = img + rng.normal(0, 1, size=img.shape) * rng.uniform(0, 12, size=(num_samples, 1, 1, 1))
    return np.clip(img, 0, 255).round().astype(np.uint8), labels.astype(np.int64)


def load_glyphs(num_samples, num_classes=16, image_size=32, seed=0, split='train', cache_dir=None):
    """:func:`render_glyphs`, cached as ``cache_dir/glyphs_<digest>.npz`` when ``cache_dir`` is set."""
    if not cache_dir:
        return render_glyphs(num_samples, num_classes, image_size, seed, split)
    key = dict(format=_FORMAT, num_samples=num_samples, num_classes=num_classes, image_size=image_size,
               seed=seed, split=split)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = osp.join(cache_dir, f'glyphs_{split}_{digest}.npz')
    if osp.isfile(path):
        try:
            with np.load(path) as f:
                return f['images'], f['labels']
        except (OSError, ValueError, KeyError):
            pass  # unreadable: regenerate
    images, labels = render_glyphs(num_samples, num_classes, image_size, seed, split)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f'.{os.getpid()}.tmp.npz'
    np.savez_compressed(tmp, images=images, labels=labels)
    os.replace(tmp, path)
    return images, labels


@DATASETS.register_module()
class ProceduralGlyphDataset(BaseDataset):
    """``num_samples`` procedurally rendered glyph images in ``num_classes`` classes.

    Args:
        num_samples (int): dataset length (classes are balanced: label ``i % num_classes``).
        num_classes (int): number of glyph classes.
        image_size (int): height and width.
        seed (int): glyph and sample generator seed; ``split`` selects the
            sample stream, so train and test hold different drawings of the
            same glyphs.
        split (str): ``'train'`` or ``'test'``.
        cache_dir (str | None): where to keep the rendered arrays (``.npz``).
        pipeline (list): mmpretrain transforms, e.g. ``[dict(type='PackInputs')]``.
    """

    METAINFO = dict(classes=None)

    def __init__(self, num_samples=1000, num_classes=16, image_size=32, seed=0, split='train', cache_dir=None,
                 pipeline=(), **kwargs):
        if num_samples < 1 or num_classes < 2 or image_size < 8:
            raise ConfigError('ProceduralGlyphDataset needs num_samples >= 1, num_classes >= 2 and '
                             f'image_size >= 8; got {num_samples}, {num_classes}, {image_size}')
        if split not in ('train', 'test'):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.image_size, self.seed, self.split, self.cache_dir = int(image_size), int(seed), split, cache_dir
        metainfo = dict(classes=[f'glyph_{i}' for i in range(self.num_classes)])
        super().__init__(ann_file='', metainfo=metainfo, data_root='', pipeline=list(pipeline), lazy_init=False,
                         **kwargs)

    def load_data_list(self):
        images, labels = load_glyphs(self.num_samples, self.num_classes, self.image_size, self.seed, self.split,
                                     self.cache_dir)
        shape = images.shape[1:3]
        return [dict(img=img, gt_label=int(label), img_shape=shape, ori_shape=shape)
                for img, label in zip(images, labels)]
