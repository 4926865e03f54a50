"""Procedurally generated image classification data (no download).

Used by the tiny CPU configs and tests: each class is a smooth random colour
pattern plus class-specific oriented stripes, so the classes are learnable and
models trained on it develop real features; images are generated from the
seed, so the same config always sees the same data.
"""
import numpy as np
from mmpretrain.datasets import BaseDataset

from dery.errors import ConfigError
from dery.registry import DATASETS


@DATASETS.register_module()
class SyntheticImageDataset(BaseDataset):
    """``num_samples`` RGB images of ``image_size`` in ``num_classes`` classes.

    Args:
        num_samples (int): dataset length.
        num_classes (int): number of classes.
        image_size (int): height and width.
        seed (int): generator seed; ``split`` offsets it so that train and test
            are different images of the same classes.
        split (str): ``'train'`` or ``'test'``.
        noise (float): pixel noise std (0-255 scale).
        pipeline (list): mmpretrain transforms, e.g. ``[dict(type='PackInputs')]``.
    """

    METAINFO = dict(classes=None)

    def __init__(self, num_samples=64, num_classes=4, image_size=32, seed=0, split='train',
                 noise=24.0, pipeline=(), **kwargs):
        if num_samples < 1 or num_classes < 1 or image_size < 4:
            raise ConfigError('SyntheticImageDataset needs num_samples >= 1, num_classes >= 1 and '
                             f'image_size >= 4; got {num_samples}, {num_classes}, {image_size}')
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.split = split
        self.noise = float(noise)
        metainfo = dict(classes=[f'class_{i}' for i in range(num_classes)])
        super().__init__(ann_file='', metainfo=metainfo, data_root='', pipeline=list(pipeline),
                         lazy_init=False, **kwargs)

    def load_data_list(self):
        size, k = self.image_size, self.num_classes
        class_rng = np.random.default_rng(self.seed)
        angles = class_rng.uniform(0, np.pi, size=k)
        freqs = class_rng.uniform(2.0, 6.0, size=k)
        colours = class_rng.uniform(40, 215, size=(k, 3))
        rng = np.random.default_rng([self.seed, 0 if self.split == 'train' else 1])
        yy, xx = np.mgrid[0:size, 0:size] / size
        data = []
        for i in range(self.num_samples):
            label = i % k
            phase = rng.uniform(0, 2 * np.pi)
            a = angles[label] + rng.normal(0, 0.15)
            stripes = np.sin(2 * np.pi * freqs[label] * (xx * np.cos(a) + yy * np.sin(a)) + phase)
            img = colours[label][None, None, :] * (0.6 + 0.4 * stripes[..., None])
            img = img + rng.normal(0, self.noise, size=img.shape)
            img = np.clip(img, 0, 255).astype(np.uint8)
            data.append(dict(img=img, gt_label=int(label), img_shape=img.shape[:2],
                             ori_shape=img.shape[:2]))
        return data
