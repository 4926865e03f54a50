"""Draw the proxies' target batches: a seeded, shuffled subset of the target data.

The original DeRy code always scored on the first batches of the target loader;
here the subset is a seeded random permutation, deterministic for a seed, drawn
without touching the global RNGs.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from dery.errors import ConfigError
from dery.utils import get_logger

__all__ = ['ProxyBatches', 'sample_batches', 'IMAGENET_MEAN', 'IMAGENET_STD']

# mmpretrain's default ImageNet normalisation (0-255 scale)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ProxyBatches(list):
    """A list of ``(images, labels)`` batches ready for a proxy.

    ``images``: float tensor ``[B, 3, H, W]``; ``labels``: long tensor ``[B]`` or
    None when the data has no labels. ``num_classes`` is read from the data set's
    metainfo when it has one (else None). Pass it to ``proxy.score`` to reuse the
    same batches for many models without re-reading the data.
    """

    num_classes: Optional[int] = None
    seed: Optional[int] = None


def _label_to_int(label) -> Optional[int]:
    if label is None:
        return None
    if hasattr(label, 'gt_label'):  # mmpretrain DataSample
        label = label.gt_label if 'gt_label' in label else None
        if label is None:
            return None
    if isinstance(label, (torch.Tensor, np.ndarray)):
        label = torch.as_tensor(label)
        if label.numel() == 0:
            return None
        if label.numel() != 1:
            raise ConfigError(
                f'proxy data: expected one class label per image, got a label of shape '
                f'{tuple(label.shape)}; multi-label targets are not supported by the proxies')
        return int(label.reshape(-1)[0])
    return int(label)


def _to_chw(img) -> torch.Tensor:
    """A CHW tensor from a tensor, numpy HWC/CHW array or PIL image."""
    if isinstance(img, torch.Tensor):
        t = img
    else:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3):
            arr = arr.transpose(2, 0, 1)  # HWC -> CHW
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ConfigError(
            f'proxy data: expected an image of shape [C, H, W], got {tuple(t.shape)}')
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t


def _is_batch_item(item) -> bool:
    """Whether an iterable's item is a whole batch rather than one sample."""
    if isinstance(item, dict):
        inputs = item.get('inputs')
        return isinstance(inputs, (list, tuple)) or (
            isinstance(inputs, torch.Tensor) and inputs.ndim == 4)
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0].ndim == 4
    return isinstance(item, torch.Tensor) and item.ndim == 4


def _unbatch(item) -> List[Any]:
    if isinstance(item, dict):
        inputs = item['inputs']
        samples = item.get('data_samples') or [None] * len(inputs)
        return [dict(inputs=x, data_samples=s) for x, s in zip(inputs, samples)]
    if isinstance(item, torch.Tensor):
        return [(x, None) for x in item]
    imgs, labels = item[0], item[1] if len(item) > 1 else None
    if labels is None:
        return [(x, None) for x in imgs]
    return list(zip(imgs, labels))


def _num_classes_of(ds) -> Optional[int]:
    for getter in (lambda d: d.metainfo.get('classes'), lambda d: d.CLASSES,
                   lambda d: d.classes):
        try:
            classes = getter(ds)
        except Exception:
            continue
        if classes is not None and not isinstance(classes, str):
            try:
                return len(classes)
            except TypeError:
                continue
    return None


def _is_map_style(obj) -> bool:
    return (hasattr(obj, '__getitem__') and hasattr(obj, '__len__')
            and not isinstance(obj, (torch.Tensor, dict, str)))


def _is_mm(preprocess) -> bool:
    from mmengine.model import BaseDataPreprocessor
    return isinstance(preprocess, BaseDataPreprocessor)


def _call_preprocess(preprocess, batch):
    if _is_mm(preprocess):
        return preprocess(batch, False)
    return preprocess(batch)


def _build_preprocess(preprocess):
    if isinstance(preprocess, dict):
        with warnings.catch_warnings():  # mmcv-lite warns about its missing ops
            warnings.simplefilter('ignore', UserWarning)
            import mmpretrain.models  # noqa: F401  (registers ClsDataPreprocessor)
        from mmpretrain.registry import MODELS
        return MODELS.build(preprocess)
    return preprocess


_warned_norm = [False]


def _default_normalise(imgs: torch.Tensor) -> torch.Tensor:
    if imgs.dtype == torch.uint8:
        if not _warned_norm[0]:
            get_logger().info(
                'proxy data: uint8 images without `preprocess` are normalised with the '
                'ImageNet mean/std (no channel swap); pass the model\'s data '
                'preprocessor for the exact pipeline')
            _warned_norm[0] = True
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (imgs.float() - mean) / std
    return imgs.float()


def _stack(imgs: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in imgs}
    if len(shapes) > 1:
        raise ConfigError(
            f'proxy data: images of different sizes {sorted(shapes)[:3]} cannot be '
            'batched; resize them in the data pipeline or pass a `preprocess` that '
            'pads/resizes (e.g. the model\'s ClsDataPreprocessor)')
    return torch.stack(list(imgs))


def _collate(samples: List[Any], preprocess) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if any(isinstance(s, dict) for s in samples):
        inputs = [_to_chw(s['inputs']) for s in samples]
        data_samples = [s.get('data_samples') for s in samples]
        if preprocess is not None:
            out = _call_preprocess(preprocess, dict(
                inputs=inputs, data_samples=data_samples
                if all(d is not None for d in data_samples) else None))
            imgs = out['inputs'] if isinstance(out, dict) else out
            if isinstance(out, dict) and out.get('data_samples') is not None:
                data_samples = out['data_samples']
        else:
            imgs = _default_normalise(_stack(inputs))
        labels = [_label_to_int(d) for d in data_samples]
    else:
        imgs = _stack([_to_chw(s[0]) for s in samples])
        labels = [_label_to_int(s[1]) for s in samples]
        if preprocess is not None:
            batch = dict(inputs=imgs, data_samples=None) if _is_mm(preprocess) else imgs
            out = _call_preprocess(preprocess, batch)
            imgs = out['inputs'] if isinstance(out, dict) else out
        else:
            imgs = _default_normalise(imgs)
    imgs = imgs.detach().float().cpu()
    if any(label is None for label in labels):
        return imgs, None
    return imgs, torch.tensor(labels, dtype=torch.long)


def sample_batches(data, num_batches: int = 5, batch_size: int = 32, seed: int = 0,
                   preprocess: Optional[Union[Callable, dict]] = None,
                   max_pool: Optional[int] = None) -> ProxyBatches:
    """Draw ``num_batches`` x ``batch_size`` samples from a seeded shuffled subset.

    Args:
        data: one of
            - a ``(images, labels)`` tensor pair (``labels`` may be None);
            - a map-style data set (``__len__`` + ``__getitem__``) yielding
              ``(img, label)`` or mmpretrain dicts ``{'inputs': uint8 CHW,
              'data_samples': DataSample}``; a plain list of samples works too;
            - a ``DataLoader`` over such a data set (its data set is indexed
              directly, so the loader's own sampler/shuffle does not matter);
            - any other iterable of samples or batches (tuples or mmengine dicts;
              a list whose first item is a batch counts as such): its first
              ``max_pool`` samples (default 10 x needed) are read and the subset
              is drawn from them;
            - a :class:`ProxyBatches` (returned as is).
        num_batches, batch_size: how much to draw (paper: 5 x 32).
        seed: seed of a local ``torch.Generator``; the global RNGs are untouched.
        preprocess: called on each collated batch. An mmengine data preprocessor
            (e.g. mmpretrain's ``ClsDataPreprocessor``, or its config dict) gets
            ``dict(inputs, data_samples)`` and ``training=False``; any other
            callable gets the dict for dict data and the ``[B, 3, H, W]`` tensor
            for tuple data. Without it, uint8 images are normalised with the
            ImageNet mean/std and float images are used as they are.
        max_pool: for plain iterables, how many samples to read at most.

    Returns:
        ProxyBatches: list of ``(float images [B,3,H,W], long labels [B] or None)``
        on the CPU, deterministic for a seed. With fewer samples than asked, all
        of them are used (a warning is logged) and the last batch may be smaller.
    """
    if isinstance(data, ProxyBatches):
        return data
    num_batches, batch_size = int(num_batches), int(batch_size)
    if num_batches < 1 or batch_size < 1:
        raise ConfigError(
            f'num_batches and batch_size must be >= 1, got {num_batches} and {batch_size}')
    need = num_batches * batch_size
    preprocess = _build_preprocess(preprocess)
    g = torch.Generator().manual_seed(int(seed))
    num_classes = None
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and isinstance(data[0], torch.Tensor) and data[0].ndim == 4):
        images, labels = data
        n = images.shape[0]
        idx = torch.randperm(n, generator=g)[:need]
        samples = [(images[i], None if labels is None else labels[i]) for i in idx.tolist()]
    else:
        source = data
        if isinstance(data, DataLoader) and _is_map_style(data.dataset):
            source = data.dataset
        if _is_map_style(source) and len(source) and not _is_batch_item(source[0]):
            num_classes = _num_classes_of(source)
            n = len(source)
            idx = torch.randperm(n, generator=g)[:need].tolist()
            samples = [source[i] for i in idx]
        elif hasattr(source, '__iter__'):
            num_classes = _num_classes_of(getattr(source, 'dataset', source))
            cap = int(max_pool) if max_pool else 10 * need
            pool = []
            for item in source:
                pool.extend(_unbatch(item) if _is_batch_item(item) else [item])
                if len(pool) >= cap:
                    break
            pool = pool[:cap]
            idx = torch.randperm(len(pool), generator=g)[:need].tolist()
            samples = [pool[i] for i in idx]
        else:
            raise TypeError(
                f'proxy data of type {type(data).__name__} is not supported; pass an '
                '(images, labels) tensor pair, a data set, a DataLoader or an iterable')
    if not samples:
        raise ConfigError('proxy data is empty: the target data set has no samples')
    if len(samples) < need:
        get_logger().warning(
            f'proxy data has only {len(samples)} samples, fewer than num_batches x '
            f'batch_size = {need}; scoring on all of them')
    out = ProxyBatches(_collate(samples[i:i + batch_size], preprocess)
                       for i in range(0, len(samples), batch_size))
    out.num_classes = num_classes
    out.seed = int(seed)
    return out
