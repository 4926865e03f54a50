"""Probe data and feature capture for the similarity stage.

* :class:`ProbeSet` builds the probe dataset from an mmpretrain/DeRy dataset
  config, takes a seeded subset (``num_samples``: default 1/20 of the set, as
  in the paper, at least one batch), cuts it into fixed global batches and
  normalises them with mmpretrain's ``ClsDataPreprocessor``. Batches are
  defined once for the whole run, so a distributed run (rank ``r`` takes
  batches ``r, r + W, ...``) sees exactly the batches of a single process.
* node outputs are pooled to one vector per sample with :func:`dery.zoo.layout.pool`.
* :func:`capture_batch` runs one zoo model on one batch (one forward pass,
  hooks on the nodes, stopping after the last node) and returns the pooled
  features of all its nodes as one ``[B, sum(dims)]`` tensor.
"""
import hashlib
import json
import math
import weakref
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dery.errors import ConfigError


#: ImageNet normalisation (mmpretrain's numbers), used when the probe config
#: gives no ``data_preprocessor``.
DEFAULT_PREPROCESSOR = dict(type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53],
                            std=[58.395, 57.12, 57.375], to_rgb=True)
#: Bump when the meaning of cached features changes (2: MAE-style backbones unmasked, seeded forwards, #16).
FEATURE_FORMAT = 2


def _json(obj):
    return json.dumps(obj, sort_keys=True, default=_jsonable, separators=(',', ':'))


def _jsonable(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if hasattr(o, 'to_dict'):
        return o.to_dict()
    if isinstance(o, dict):
        return dict(o)
    return repr(o)


def digest(*objs):
    """Hex sha256 of the sorted-JSON form of ``objs``."""
    return hashlib.sha256(_json(list(objs)).encode()).hexdigest()


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------
def pooled_dims(zoo_model, pooling):
    """Per-node pooled feature sizes, from the traced node output shapes."""
    return [zoo_model.out_spec(i).pool(zoo_model.out_spec(i).zeros(), pooling).shape[1]
            for i in range(len(zoo_model.nodes))]


def _model_device(zoo_model):
    p = next(zoo_model.model.parameters(), None)
    if p is None:
        p = next(zoo_model.model.buffers(), None)
    return p.device if p is not None else torch.device('cpu')


@torch.no_grad()
def capture_batch(zoo_model, inputs, pooling, out_device='cpu', out_dtype=torch.float32,
                  return_dims=False):
    """Pooled features ``[B, sum(dims)]`` of all nodes of ``zoo_model``.

    ``inputs`` (normalised ``[B, C, H, W]``) is resized (bilinear) to the
    model's ``input_size`` when its spatial size differs. ``return_dims``:
    also return the per-node feature sizes.
    """
    pooled = capture_nodes(zoo_model, inputs, pooling)
    feats = torch.cat([p.reshape(p.shape[0], -1) for p in pooled], 1)
    if out_device is not None:
        feats = feats.to(out_device)
    feats = feats.to(out_dtype)
    return (feats, [p.shape[1] for p in pooled]) if return_dims else feats


def capture_nodes(zoo_model, inputs, pooling):
    """Pooled features of each node, a list of ``[B, d_i]`` tensors (model device).

    One forward pass with hooks on the nodes (:meth:`ZooModel.node_outputs`,
    which stops after the last node); inputs are resized to the model's
    ``input_size`` when needed.
    """
    x = inputs.to(_model_device(zoo_model), non_blocking=True)
    size = tuple(zoo_model.input_size[1:])
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
    spec = zoo_model.out_spec(-1)  # family and prefix tokens are the model's
    pooled = []
    with torch.no_grad():  # pooled as each node output appears: the outputs are never all held at once
        zoo_model.node_outputs(x, on_output=lambda node, out: pooled.append(spec.pool(out, pooling)))
    return pooled


# --------------------------------------------------------------------------
# cache identities
# --------------------------------------------------------------------------
def _entry_identity(entry):
    if entry is None:
        return None
    for attr in ('cache_key', 'identity'):
        fn = getattr(entry, attr, None)
        if callable(fn):
            return fn()
    if hasattr(entry, 'to_dict'):
        entry = entry.to_dict()
    if isinstance(entry, dict):
        return {k: entry.get(k) for k in ('name', 'adapter', 'model', 'weights', 'kwargs')}
    return repr(entry)


_DIGESTS = weakref.WeakKeyDictionary()


def weights_digest(module):
    """Digest of every parameter and buffer (names, shapes, dtypes, values).

    A sha256 over each tensor's name, shape, dtype and the CRC-32 of its
    bytes (CRC runs at memory speed: ~0.15 s for 60M parameters). Memoised
    per module while no tensor is replaced or modified in place (torch's
    version counters), so repeated calls cost nothing.
    """
    state = module.state_dict(keep_vars=True)
    sig = tuple((k, v.data_ptr(), v._version, tuple(v.shape), v.dtype) for k, v in state.items()
                if torch.is_tensor(v))
    memo = _DIGESTS.get(module)
    if memo is not None and memo[0] == sig:
        return memo[1]
    h = hashlib.sha256()
    for name, t in state.items():
        if not torch.is_tensor(t):
            continue
        t = t.detach()
        h.update(f'{name}:{tuple(t.shape)}:{t.dtype}:'.encode())
        t = t.cpu().contiguous()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8)
        try:
            crc = zlib.crc32(memoryview(t.numpy()).cast('B')) if t.numel() else 0
        except (TypeError, RuntimeError):  # exotic dtypes
            crc = zlib.crc32(repr(t.tolist()).encode())
        h.update(f'{crc};'.encode())
    out = h.hexdigest()
    try:
        _DIGESTS[module] = (sig, out)
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return out


def model_key(zoo_model):
    """Cache identity of a zoo model.

    The zoo entry's identity (name, adapter, model id, weights, kwargs) when
    the model came from ``model_zoo.yml``, else its name and class; plus its
    node list, family, input size and a digest of its weights (so a changed
    checkpoint behind the same entry, or two randomly initialised models of
    one name, never share a cache).
    """
    model = zoo_model.model
    ident = dict(name=zoo_model.name,
                 cls=f'{type(model).__module__}.{type(model).__qualname__}',
                 entry=_entry_identity(getattr(zoo_model, 'entry', None)),
                 nodes=list(zoo_model.nodes), family=zoo_model.family,
                 input_size=list(zoo_model.input_size), weights=weights_digest(model))
    return digest(ident)


# --------------------------------------------------------------------------
# probe data
# --------------------------------------------------------------------------
def _resolve_num_samples(num, total, batch_size):
    """The probe size: ``None`` (1/20 of the set, at least one batch), a count or a fraction.

    At least 2 samples (a similarity between features of one sample is not
    defined), and never more than the data set has.
    """
    if total < 2:
        raise ConfigError(f'the probe dataset has {total} sample(s); the similarity needs at least 2: '
                          'give probe.dataset more images')
    if num is None:
        num = min(total, max(total // 20, batch_size))
    elif isinstance(num, bool) or not isinstance(num, (int, float, np.integer, np.floating)):
        raise ConfigError(f'probe num_samples must be None, an int or a fraction, got {num!r}')
    elif isinstance(num, (float, np.floating)) and 0 < num <= 1:
        num = int(round(total * float(num)))  # a fraction of the dataset
    elif isinstance(num, (float, np.floating)) and not float(num).is_integer():
        raise ConfigError(f'probe num_samples must be a count or a fraction in (0, 1], got {num}')
    num = int(num)
    if num < 2:
        raise ConfigError(f'probe num_samples is {num}; the similarity needs at least 2 samples '
                          '(the paper uses 1/20 of the target training set): set probe.num_samples >= 2')
    if num > total:
        raise ConfigError(f'probe num_samples={num} is more than the {total} samples of the probe data set; '
                          f'set probe.num_samples <= {total} (or None: 1/20 of the set)')
    return num


def _collate(samples):
    from mmengine.dataset import pseudo_collate
    first = samples[0]
    if isinstance(first, dict) and 'inputs' in first:
        return pseudo_collate(samples)
    if isinstance(first, dict) and 'img' in first:
        imgs = []
        for s in samples:
            img = np.ascontiguousarray(s['img'])
            if img.ndim == 2:
                img = img[..., None]
            imgs.append(torch.from_numpy(img).permute(2, 0, 1).contiguous())
        return dict(inputs=imgs, data_samples=None)
    raise ConfigError('probe samples must be dicts with `inputs` (end the dataset pipeline with '
                    "dict(type='PackInputs')) or `img`; got "
                    f'{type(first).__name__} {list(first)[:5] if isinstance(first, dict) else ""}')


def probe_identity(probe_cfg):
    """What in a ``probe`` config can change the similarity (for stage stamps)."""
    cfg = dict(probe_cfg or {})
    ds = cfg.get('dataset')
    return dict(dataset=ds if isinstance(ds, dict) or ds is None else repr(ds),
                batch_size=int(cfg.get('batch_size', 32)), num_samples=cfg.get('num_samples'),
                seed=int(cfg.get('seed', 0)), data_preprocessor=cfg.get('data_preprocessor') or DEFAULT_PREPROCESSOR)


class _Indexed(torch.utils.data.Dataset):

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[int(i)]


class ProbeSet:
    """The probe data of the similarity stage (see the module docstring).

    Args:
        probe_cfg (dict): ``dataset`` (a dataset config, or a built dataset),
            ``batch_size`` (32), ``num_workers`` (0), ``num_samples`` (None:
            1/20 of the set, at least one batch; an int; or a fraction),
            ``seed`` (0), ``data_preprocessor`` (default: ImageNet mean/std,
            ``to_rgb=True``).
    """

    def __init__(self, probe_cfg):
        from dery.registry import DATASETS, MODELS
        import dery.datasets  # noqa: F401  (registers the synthetic data)
        if not isinstance(probe_cfg, dict) or 'dataset' not in probe_cfg:
            raise ConfigError('probe config needs a `dataset` entry, e.g. dict(dataset=dict('
                             "type='SyntheticImageDataset', ...), batch_size=32)")
        cfg = dict(probe_cfg)
        ds = cfg['dataset']
        self.dataset = DATASETS.build(ds) if isinstance(ds, dict) else ds
        total = len(self.dataset)
        self.batch_size = int(cfg.get('batch_size', 32))
        if self.batch_size < 1:
            raise ConfigError(f'probe batch_size must be >= 1, got {self.batch_size}')
        self.num_workers = int(cfg.get('num_workers', 0))
        self.seed = int(cfg.get('seed', 0))
        num = _resolve_num_samples(cfg.get('num_samples'), total, self.batch_size)
        self.indices = np.random.default_rng(self.seed).permutation(total)[:num]
        bs = self.batch_size
        self.batches = [self.indices[i:i + bs].tolist() for i in range(0, num, bs)]
        pp = cfg.get('data_preprocessor') or DEFAULT_PREPROCESSOR
        self.preprocessor = MODELS.build(dict(pp))
        if isinstance(ds, dict):
            ds_ident = dict(ds)
        else:  # a built dataset: its class, length and the first sample
            first = self.dataset[int(self.indices[0])]
            blob = first.get('inputs', first.get('img')) if isinstance(first, dict) else first
            blob = blob.numpy() if torch.is_tensor(blob) else np.asarray(blob)
            ds_ident = dict(cls=type(self.dataset).__name__, len=total,
                            first=hashlib.sha256(np.ascontiguousarray(blob).tobytes()).hexdigest())
        #: what defines the probe batches (readable, for stage stamps) and its digest
        self.identity = dict(dataset=ds_ident, total=total, num_samples=num, batch_size=self.batch_size,
                             seed=self.seed, preprocessor=dict(pp),
                             indices=hashlib.sha256(self.indices.tobytes()).hexdigest())
        self.key = digest(dict(dataset=ds_ident, total=total, num=num, seed=self.seed,
                               preprocessor=dict(pp),
                               indices=hashlib.sha256(self.indices.tobytes()).hexdigest()))

    @property
    def num_samples(self):
        return len(self.indices)

    def __len__(self):
        return len(self.batches)

    def iter_raw(self, batch_ids):
        """Yield ``(batch id, collated batch)`` from the data set (before normalisation)."""
        batch_ids = list(batch_ids)
        if not batch_ids:
            return
        loader = DataLoader(_Indexed(self.dataset),
                            batch_sampler=[self.batches[t] for t in batch_ids],
                            num_workers=self.num_workers, collate_fn=_collate)
        yield from zip(batch_ids, loader)

    def normalise(self, data):
        """The data preprocessor on a collated batch: inputs ``[B, C, H, W]`` float32."""
        with torch.no_grad():
            return self.preprocessor(data, False)['inputs']

    def store(self, cache, on_batch=None):
        """Keep the batches in ``cache`` (a :class:`~dery.similarity.cache.ProbeCache`; written
        unless it is complete already), and read them from there from now on. ``on_batch()``:
        called after each batch read (progress bars)."""
        if not cache.complete(len(self)):
            def batches():
                for item in self.iter_raw(range(len(self))):
                    yield item
                    if on_batch is not None:
                        on_batch()
            cache.write(batches())
        self._store = cache
        return self

    def iter_batches(self, batch_ids):
        """Yield ``(batch id, normalised inputs [B, C, H, W] float32)``.

        From the stored batches when :meth:`store` was called (the data set is read again only
        for a batch whose file is damaged), else from the data set.
        """
        batch_ids = list(batch_ids)
        store = getattr(self, '_store', None)
        if store is None:
            for t, data in self.iter_raw(batch_ids):
                yield t, self.normalise(data)
            return
        for t in batch_ids:
            data = store.read(t)
            if data is None:
                data = next(self.iter_raw([t]))[1]
            yield t, self.normalise(data)


def num_steps(start, total, world):
    return max(0, math.ceil((total - start) / world))


__all__ = ['ProbeSet', 'probe_identity', 'pooled_dims', 'capture_batch', 'capture_nodes',
           'model_key', 'weights_digest', 'digest', 'DEFAULT_PREPROCESSOR']
