"""A real target task that ships offline: scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` holds 1797 8x8 grey images (values 0-16) of
the digits 0-9 (UCI optdigits test set), bundled with scikit-learn. They are
upsampled (bilinear) to ``image_size`` and repeated to three channels, ink
bright on a dark ground, so the usual mmpretrain pipelines and models apply.

``style='colour'`` draws every image in its own random colours (bright ink of
any hue on a dark ground, one in five the other way round) with pixel noise,
fixed per image whatever the split, as MNIST-M does for MNIST: the digit
shapes stay, but a model must also learn to ignore colour, which takes more
data than a small training set has.

The split is fixed by ``seed``: a seeded permutation puts ``train_pool``
images in the training pool and the rest (797 by default) in ``test``; the
``train`` split takes ``num_train`` images of the pool, balanced over the
classes, so a small training set is the first images of a larger one.
"""
import functools

import numpy as np
from mmpretrain.datasets import BaseDataset

from dery.errors import ConfigError
from dery.registry import DATASETS


@functools.lru_cache(maxsize=1)
def load_digits_arrays():
    """``(images float32 [1797, 8, 8] in 0..16, labels int64 [1797])`` from scikit-learn (read once)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('SklearnDigitsDataset needs scikit-learn (its bundled digits data set, no '
                          'download): .venv/bin/pip install scikit-learn (listed in '
                          'requirements/optional.txt)') from None
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def upsample(images, size):
    """``[N, h, w]`` 0..16 -> ``[N, size, size]`` float32 ink in 0..1 (bilinear)."""
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None] / 16.0
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode='bilinear', align_corners=False)
    return t[:, 0].clamp(0, 1).numpy()


def colourise(ink, index, seed=0, style='grey'):
    """Ink ``[N, H, W]`` in 0..1 -> ``[N, H, W, 3]`` uint8; ``index``: the images' data set indices.

    ``grey``: white ink on black. ``colour``: per-image random colours (bright
    ink of any hue on a dark ground, one in five the other way round: the
    scheme of :func:`dery.datasets.procedural.random_colours`) and pixel noise,
    drawn from ``(seed, index)`` so an image looks the same in every split.
    """
    if style == 'grey':
        grey = np.round(ink * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if style != 'colour':
        raise ConfigError(f"style must be 'grey' or 'colour', got {style!r}")
    from .procedural import random_colours
    out = np.empty(ink.shape + (3, ), np.uint8)
    for k, i in enumerate(index):
        rng = np.random.default_rng([seed, 4242, int(i)])
        bg, fg, _ = random_colours(rng, 1)
        img = bg[0] + (fg[0] - bg[0]) * ink[k][..., None] + rng.normal(0, 12, size=ink[k].shape + (3, ))
        out[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def split_indices(labels, split, num_train=None, train_pool=1000, seed=0):
    """Indices of ``split``: ``test`` = outside the seeded training pool; ``train`` balanced prefix of it."""
    n = len(labels)
    if not 0 < train_pool < n:
        raise ConfigError(f'train_pool must be in 1..{n - 1}, got {train_pool}')
    perm = np.random.default_rng(seed).permutation(n)
    if split == 'test':
        return perm[train_pool:]
    pool = perm[:train_pool]
    num_train = train_pool if num_train is None else int(num_train)
    if not 0 < num_train <= train_pool:
        raise ConfigError(f'num_train must be in 1..{train_pool}, got {num_train}')
    # round-robin over the classes in pool order: every prefix is balanced
    classes = np.unique(labels)
    queues = {c: [i for i in pool if labels[i] == c] for c in classes}
    order, k = [], 0
    while len(order) < num_train:
        c = classes[k % len(classes)]
        if queues[c]:
            order.append(queues[c].pop(0))
        k += 1
        if k > 10 * train_pool:  # pragma: no cover - pool exhausted
            break
    return np.array(order[:num_train])


@DATASETS.register_module()
class SklearnDigitsDataset(BaseDataset):
    """scikit-learn's 8x8 handwritten digits, upsampled to ``image_size`` RGB.

    Args:
        split (str): ``'train'`` (``num_train`` images of the training pool) or
            ``'test'`` (every image outside the pool: 797 by default).
        num_train (int | None): training images (balanced over the 10 classes);
            None: the whole pool.
        train_pool (int): images reserved for training; the rest is the test split.
        image_size (int): output height and width.
        seed (int): the permutation that defines the split (and the colours).
        style (str): ``'grey'`` (white ink on black) or ``'colour'`` (random
            colours and noise per image, MNIST-M style).
        pipeline (list): mmpretrain transforms.
    """

    METAINFO = dict(classes=[str(i) for i in range(10)])

    def __init__(self, split='train', num_train=None, train_pool=1000, image_size=32, seed=0, style='grey',
                 pipeline=(), **kwargs):
        if split not in ('train', 'test'):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        if style not in ('grey', 'colour'):
            raise ConfigError(f"style must be 'grey' or 'colour', got {style!r}")
        self.split, self.num_train, self.train_pool = split, num_train, int(train_pool)
        self.image_size, self.seed, self.style = int(image_size), int(seed), style
        super().__init__(ann_file='', metainfo=dict(self.METAINFO), data_root='', pipeline=list(pipeline),
                         lazy_init=False, **kwargs)

    def load_data_list(self):
        images, labels = load_digits_arrays()
        images.flags.writeable = labels.flags.writeable = False  # shared by every instance
        idx = split_indices(labels, self.split, self.num_train, self.train_pool, self.seed)
        imgs = colourise(upsample(images[idx], self.image_size), idx, self.seed, self.style)
        shape = imgs.shape[1:3]
        return [dict(img=img, gt_label=int(labels[i]), img_shape=shape, ori_shape=shape)
                for img, i in zip(imgs, idx)]
