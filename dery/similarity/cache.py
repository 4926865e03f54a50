"""On-disk caches of the similarity stage.

Layout under ``WORK_DIR/similarity_cache/``::

    probe-<key16>/<t>.pt            probe batch t as the data pipeline gives it (before normalisation)
    probe-<key16>/index.json        manifest: key, batch sizes, crc32 of every batch (written last)
    features/<model>-<key16>.npy    pooled features of all nodes, [num_samples, sum(dims)] float32
    features/<model>-<key16>.json   manifest: key, nodes, dims, shape, crc32 (written last)
    features/.<model>-<key16>.partial.npy / .partial.json   an unfinished capture
    grams/<model>-<key16>.npy       store='accumulators': per batch, each node's centred Gram matrix
                                    (+ its scale), [num_batches, nodes * (B * B + 2)] float64
    grams/...                       manifest and unfinished captures as for features/

The key hashes (model identity and weights, probe data, pooling), so a
changed model, probe set or pooling never reads a stale file. Every finished
file is written under a temporary name and renamed when complete
(:func:`dery.utils.atomic_write`); its manifest carries a CRC-32 of the data,
checked on load: a truncated or corrupted file is reported with a warning,
deleted and recomputed. An unfinished capture keeps its rows and a cursor
(``checkpoint_interval`` batches apart), so a killed run goes on from the last
cursor; its CRC is checked on resume as well.
"""
import contextlib
import os
import os.path as osp
import re
import zlib

import numpy as np

from dery.errors import ConfigError
from dery.utils import atomic_save_json, get_logger

_CRC_ROWS_BYTES = 64 << 20


def safe_name(name):
    return re.sub(r'[^A-Za-z0-9._-]+', '_', str(name)) or 'model'


def _crc_rows(arr, rows):
    """CRC-32 of the bytes of ``arr[:rows]`` (C-contiguous float32)."""
    crc = 0
    if rows == 0 or arr.shape[1] == 0:
        return crc
    step = max(1, _CRC_ROWS_BYTES // (arr.shape[1] * arr.itemsize))
    for r in range(0, rows, step):
        block = np.ascontiguousarray(arr[r:min(rows, r + step)])
        crc = zlib.crc32(memoryview(block).cast('B'), crc)
    return crc


def _read_json(path):
    import json
    with open(path) as f:
        return json.load(f)


def _remove(*paths):
    for p in paths:
        with contextlib.suppress(OSError):
            os.remove(p)


class FeatureCache:
    """Pooled features of one zoo model on the probe set (see module doc).

    The per-node feature sizes (``dims``) come from the manifest of a
    finished file, the progress record of an unfinished one, or the first
    captured batch (:meth:`start`); so no extra forward pass is needed to learn
    them. ``nodes=None``: not known yet (the model is not built); a finished
    file's manifest gives them, else :meth:`set_nodes` once the model is built.
    ``dtype``: of the rows (float32 features; float64 Gram matrices).
    """

    def __init__(self, root, name, key, num_samples, nodes=None, dtype=np.float32):
        self.root = root
        self.name = name
        self.key = key
        self.n = int(num_samples)
        self.nodes = None if nodes is None else list(nodes)
        self.dtype = np.dtype(dtype)
        self.dims = None
        stem = f'{safe_name(name)}-{key[:16]}'
        self.path = osp.join(root, stem + '.npy')
        self.manifest = osp.join(root, stem + '.json')
        self.partial = osp.join(root, f'.{stem}.partial.npy')
        self.progress = osp.join(root, f'.{stem}.partial.json')
        self._mm = None
        self._crc = 0
        self.rows_done = 0
        self.batches_done = 0

    @property
    def width(self):
        return None if self.dims is None else sum(self.dims)

    def _check_dims(self, dims):
        dims = [int(d) for d in dims]
        if self.nodes is not None and len(dims) != len(self.nodes) or min(dims, default=1) < 1:
            raise ConfigError(f'{len(dims)} node sizes for {len(self.nodes)} nodes')
        return dims

    def set_nodes(self, nodes):
        nodes = list(nodes)
        if self.nodes is not None and nodes != self.nodes:
            raise ConfigError(f'feature cache of {self.name}: the model has other nodes than the cache')
        self.nodes = nodes

    # ------------------------------------------------------------ finished
    def load(self, verify=True):
        """The cached ``[n, width]`` array (memory-mapped) or None.

        A file that exists but does not check out (bad manifest, wrong shape,
        CRC mismatch, unreadable) is reported, deleted and None is returned.
        """
        if not osp.exists(self.manifest):
            if osp.exists(self.path):  # renamed but its manifest never written
                _remove(self.path)
            return None
        try:
            man = _read_json(self.manifest)
            if man.get('key') != self.key:
                raise ConfigError(f'its key {str(man.get("key"))[:16]} is not {self.key[:16]}')
            if self.nodes is not None and list(man['nodes']) != self.nodes:
                raise ConfigError('its nodes are not the model\'s')
            nodes = self.nodes
            self.nodes = list(man['nodes'])
            try:
                dims = self._check_dims(man['dims'])
            finally:
                self.nodes = nodes
            arr = np.load(self.path, mmap_mode='c')
            if arr.dtype != self.dtype or arr.shape != (self.n, sum(dims)):
                raise ConfigError(f'shape {arr.shape} {arr.dtype}, expected ({self.n}, {sum(dims)}) '
                                 f'{self.dtype}')
            if verify and _crc_rows(arr, self.n) != man.get('crc32'):
                raise ConfigError('CRC-32 mismatch (the file is corrupted)')
            self.dims, self.nodes = dims, list(man['nodes'])
            return arr
        except Exception as e:  # noqa: BLE001 - any failure means recompute
            get_logger().warning(f'similarity: feature cache of {self.name} ({self.path}) is '
                                 f'unusable: {type(e).__name__}: {e}; recomputing it')
            _remove(self.path, self.manifest)
            return None

    # ------------------------------------------------------------ writing
    def open(self, resume=True):
        """Prepare to write (or resume); returns the number of batches already done.

        A fresh file is created by :meth:`start` once the node sizes are known.
        """
        os.makedirs(self.root, exist_ok=True)
        if resume and osp.exists(self.progress) and osp.exists(self.partial):
            try:
                prog = _read_json(self.progress)
                if prog.get('key') != self.key:
                    raise ConfigError('key mismatch')
                dims = self._check_dims(prog['dims'])
                mm = np.load(self.partial, mmap_mode='r+')
                if mm.dtype != self.dtype or mm.shape != (self.n, sum(dims)):
                    raise ConfigError(f'shape {mm.shape}')
                rows = int(prog['rows_done'])
                if not 0 <= rows <= self.n or _crc_rows(mm, rows) != prog['crc32']:
                    raise ConfigError('CRC-32 mismatch (the file is corrupted)')
                self._mm, self._crc, self.dims = mm, int(prog['crc32']), dims
                self.rows_done, self.batches_done = rows, int(prog['batches_done'])
                get_logger().info(f'similarity: resuming the features of {self.name} at batch '
                                  f'{self.batches_done} ({rows}/{self.n} samples)')
                return self.batches_done
            except Exception as e:  # noqa: BLE001
                get_logger().warning(f'similarity: unfinished feature cache of {self.name} is '
                                     f'unusable ({type(e).__name__}: {e}); starting it over')
        _remove(self.partial, self.progress)
        self._mm, self.dims = None, None
        self._crc, self.rows_done, self.batches_done = 0, 0, 0
        return 0

    def start(self, dims):
        """Create the file for node sizes ``dims`` (no-op when resuming with the same)."""
        dims = self._check_dims(dims)
        if self._mm is not None:
            if dims != self.dims:
                raise RuntimeError(f'feature cache of {self.name}: node sizes changed')
            return
        self.dims = dims
        self._mm = np.lib.format.open_memmap(self.partial, mode='w+', dtype=self.dtype,
                                             shape=(self.n, self.width))

    def write(self, row0, feats):
        """Write rows ``row0:row0 + len(feats)``; rows must come in order."""
        if row0 != self.rows_done:
            raise RuntimeError(f'feature cache of {self.name}: got rows from {row0}, '
                               f'expected {self.rows_done}')
        block = np.ascontiguousarray(feats, dtype=self.dtype)
        if block.shape[1] != self.width:
            raise RuntimeError(f'feature cache of {self.name}: got {block.shape[1]} features, '
                               f'expected {self.width}')
        self._mm[row0:row0 + len(block)] = block
        self._crc = zlib.crc32(memoryview(block).cast('B'), self._crc) if block.size else self._crc
        self.rows_done += len(block)

    def checkpoint(self, batches_done):
        self._mm.flush()
        self.batches_done = int(batches_done)
        atomic_save_json(dict(key=self.key, rows_done=self.rows_done, crc32=self._crc,
                              batches_done=self.batches_done, dims=self.dims), self.progress)

    def finalize(self):
        if self.rows_done != self.n:
            raise RuntimeError(f'feature cache of {self.name}: {self.rows_done} of {self.n} rows '
                               'written')
        self._mm.flush()
        del self._mm
        self._mm = None
        with open(self.partial, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)
        atomic_save_json(dict(key=self.key, model=self.name, nodes=self.nodes, dims=self.dims,
                              shape=[self.n, self.width], dtype=str(self.dtype), crc32=self._crc),
                         self.manifest)
        _remove(self.progress)

    def install(self, arr, nodes, dims):
        """Write a finished cache from ``arr`` (e.g. received from the rank that computed it)."""
        os.makedirs(self.root, exist_ok=True)
        self.set_nodes(nodes)
        self.open(resume=False)
        self.start(dims)
        self.write(0, arr)
        self.finalize()


class ProbeCache:
    """The probe batches as the data pipeline gives them, stored once for the whole zoo.

    The similarity stage runs the models one after the other over the same
    batches; reading the data set again for every model would cost the data
    pipeline once per model (and give other crops for random pipelines). Each
    batch is kept as it comes out of the loader's collate (uint8 images, before
    the data preprocessor, so 4x smaller than the normalised floats) in one
    ``.pt`` file; normalisation runs when a batch is read (bit-identical to
    normalising it right away). The index (batch sizes, CRC-32 of every file)
    is written last; a missing or damaged file is rebuilt.
    """

    def __init__(self, root, key):
        self.dir = osp.join(root, f'probe-{key[:16]}')
        self.index = osp.join(self.dir, 'index.json')
        self.key = key

    def _path(self, t):
        return osp.join(self.dir, f'{t:06d}.pt')

    def complete(self, num_batches):
        """True when every batch is stored and the index matches."""
        try:
            idx = _read_json(self.index)
        except (OSError, ValueError):
            return False
        return idx.get('key') == self.key and int(idx.get('num_batches', -1)) == num_batches and \
            all(osp.isfile(self._path(t)) for t in range(num_batches))

    def write(self, batches):
        """Store ``(t, collated batch)`` pairs, then the index."""
        import io

        import torch

        from dery.utils import atomic_write
        os.makedirs(self.dir, exist_ok=True)
        crcs = {}
        for t, data in batches:
            buf = io.BytesIO()
            torch.save(_plain_batch(data), buf)
            blob = buf.getvalue()
            with atomic_write(self._path(t), 'wb') as f:
                f.write(blob)
            crcs[str(t)] = zlib.crc32(blob)
        atomic_save_json(dict(key=self.key, num_batches=len(crcs), crc32=crcs), self.index)

    def read(self, t):
        """The collated batch ``t`` (a dict ``inputs``, ``data_samples``), or None when damaged."""
        import io

        import torch
        try:
            idx = _read_json(self.index)
            with open(self._path(t), 'rb') as f:
                blob = f.read()
            if zlib.crc32(blob) != idx['crc32'][str(t)]:
                raise ConfigError('CRC-32 mismatch')
            return torch.load(io.BytesIO(blob), weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure: the caller reads the data set instead
            get_logger().warning(f'similarity: stored probe batch {t} ({self._path(t)}) is unusable '
                                 f'({type(e).__name__}: {e}); reading it from the data set')
            return None


def _plain_batch(data):
    """What a collated probe batch holds that the preprocessor uses: ``inputs`` (tensors)."""
    import torch
    inputs = data['inputs'] if isinstance(data, dict) else data
    if torch.is_tensor(inputs):
        return dict(inputs=inputs)
    return dict(inputs=list(inputs))


__all__ = ['FeatureCache', 'ProbeCache', 'safe_name']
