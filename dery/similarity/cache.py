"""On-disk caches of the similarity stage.

Layout under ``WORK_DIR/similarity_cache/``::

    features/<model>-<key16>.npy    pooled features of all nodes, [num_samples, sum(dims)] float32
    features/<model>-<key16>.json   manifest: key, nodes, dims, shape, crc32 (written last)
    features/.<model>-<key16>.partial.npy / .partial.json   an unfinished capture
    stream-<key16>.pth              MinibatchCKA accumulators + batch cursor (store='accumulators')

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
    them.
    """

    def __init__(self, root, name, key, num_samples, nodes):
        self.root = root
        self.name = name
        self.key = key
        self.n = int(num_samples)
        self.nodes = list(nodes)
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
        if len(dims) != len(self.nodes) or min(dims, default=1) < 1:
            raise ConfigError(f'{len(dims)} node sizes for {len(self.nodes)} nodes')
        return dims

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
            dims = self._check_dims(man['dims'])
            arr = np.load(self.path, mmap_mode='c')
            if arr.dtype != np.float32 or arr.shape != (self.n, sum(dims)):
                raise ConfigError(f'shape {arr.shape} {arr.dtype}, expected ({self.n}, {sum(dims)}) '
                                 'float32')
            if verify and _crc_rows(arr, self.n) != man.get('crc32'):
                raise ConfigError('CRC-32 mismatch (the file is corrupted)')
            self.dims = dims
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
                if mm.dtype != np.float32 or mm.shape != (self.n, sum(dims)):
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
        self._mm = np.lib.format.open_memmap(self.partial, mode='w+', dtype=np.float32,
                                             shape=(self.n, self.width))

    def write(self, row0, feats):
        """Write rows ``row0:row0 + len(feats)``; rows must come in order."""
        if row0 != self.rows_done:
            raise RuntimeError(f'feature cache of {self.name}: got rows from {row0}, '
                               f'expected {self.rows_done}')
        block = np.ascontiguousarray(feats, dtype=np.float32)
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
                              shape=[self.n, self.width], dtype='float32', crc32=self._crc),
                         self.manifest)
        _remove(self.progress)


__all__ = ['FeatureCache', 'safe_name']
