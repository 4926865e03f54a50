"""Stage 1 of ``tools/partition.py``: functional similarity of all zoo nodes.

``compute_similarity(zoo, probe_cfg, similarity_cfg, work_dir)`` runs every
zoo model once over the probe set and returns a :class:`SimilarityResult`
with a node-by-node matrix for every ordered model pair.

How the work is organised: the model loop is outside. The probe batches are
read from the data set once and stored (``similarity_cache/probe-*``, the
collated uint8 images, normalised when read); then each model in turn is
built (from a :class:`~dery.zoo.ZooCache`), run over all batches, its cache
written, and released. Memory holds one model at a time (plus one batch and
the metric's inputs), whatever the size of the zoo; the metric then runs on
the caches of all models:

* ``store='features'`` (default): each model's pooled node outputs (one
  vector per node and sample, ``num_samples x sum(dims)`` float32) go into a
  memory-mapped per-model cache file; exact metrics (``LinearCKA``...) run on
  all samples at once (they hold the pooled features in memory, ``n x D``
  values), the streaming ``MinibatchCKA`` batch by batch from the memory map.
  Finished models are reused by any later run with the same model, probe
  data and pooling (also after adding models to the zoo or switching metric).
* ``store='accumulators'`` (``MinibatchCKA`` only): per model and batch, only
  each node's ``B x B`` centred Gram matrix is kept (what the unbiased HSIC
  of linear kernels needs), whatever the pooling (use it for
  ``pooling='flatten'``); a pass over the batches then sums the zoo-wide
  ``N x N`` accumulators. The Gram files are deleted when the stage is done.

A killed run resumes each unfinished model from its last checkpoint (every
``checkpoint_interval`` batches) and reuses every finished one.

Distributed (``launcher='pytorch'`` under torchrun, or an initialised
process group): the models are dealt to the ranks first come first served
(:class:`~dery.utils.dist.WorkQueue`: a rank that is done takes the next
model), so each process builds and holds only its share of the zoo, one
model at a time, and runs it over all probe batches. Every rank writes the
caches of its models (a rank that cannot read another's file, on a machine
without a shared work dir, receives it); rank 0 computes the metric. The
result equals the single-process one: each model's features come from the
same batches whichever rank computes them.

Options in ``similarity_cfg`` besides the metric's own arguments:
``store`` ('features' | 'accumulators'), ``checkpoint_interval`` (batches,
default 20), ``plot`` (True: summary + one heatmap per model pair;
'summary'; False), ``progress`` (rich progress bars on rank 0, default True),
``resume`` (reuse caches, default True), ``device`` ('auto': the GPU of the
process when there is one, else the CPU; 'cpu'; 'cuda:0'...).

Outputs: ``WORK_DIR/similarity.npz`` (``all``: the ``[N, N]`` matrix over the
nodes of all models in zoo order) + ``WORK_DIR/similarity.json`` (models,
node names, offsets, metric settings, cache key, timings),
``WORK_DIR/similarity_summary.png`` and ``WORK_DIR/similarity/<a>__<b>.png``.
"""
import json
import os
import os.path as osp
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from mmengine.dist import all_gather_object, barrier

from dery.errors import ConfigError
from dery.registry import SIMILARITIES
from dery.utils import atomic_save_json, atomic_write, file_digest, get_logger
from dery.utils.dist import WorkQueue, broadcast, init_dist
from dery.utils.progress import Progress
from dery.utils.stamp import Stamp
from .cache import FeatureCache, ProbeCache
from .capture import FEATURE_FORMAT, ProbeSet, _model_device, capture_batch, digest, model_key

RESULT_FORMAT = 1
PIPELINE_KEYS = ('store', 'checkpoint_interval', 'plot', 'progress', 'resume', 'device')
STORES = ('features', 'accumulators')


# --------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------
@dataclass
class SimilarityResult:
    """Node-by-node similarity matrices for every ordered pair of zoo models.

    Attributes:
        nodes: ``{model: [node names]}`` in zoo order.
        matrices: ``{(a, b): ndarray [len(nodes[a]), len(nodes[b])]}`` for all
            ordered pairs, ``(a, a)`` included; entry ``[i, j]`` compares node
            ``i`` of ``a`` with node ``j`` of ``b``.
        type: the metric type (``'LinearCKA'``...).
        seconds: wall time of the computation that produced it.
        meta: cache key, metric settings, probe info, timings.
    """

    nodes: dict
    matrices: dict
    type: str
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def models(self):
        return list(self.nodes)

    def offsets(self):
        out, k = OrderedDict(), 0
        for m, ns in self.nodes.items():
            out[m] = (k, k + len(ns))
            k += len(ns)
        return out

    def full(self):
        """The ``[N, N]`` matrix over the nodes of all models, in zoo order."""
        ms = self.models
        return np.block([[np.asarray(self.matrices[(a, b)]) for b in ms] for a in ms])

    @classmethod
    def from_full(cls, full, nodes, type, seconds=0.0, meta=None):
        full = np.asarray(full, dtype=np.float64)
        res = cls(nodes=OrderedDict((m, list(ns)) for m, ns in nodes.items()), matrices={},
                  type=type, seconds=float(seconds), meta=dict(meta or {}))
        offs = res.offsets()
        n = sum(len(ns) for ns in res.nodes.values())
        if full.shape != (n, n):
            raise ConfigError(f'similarity matrix has shape {full.shape}, the nodes need ({n}, {n})')
        for a, (a0, a1) in offs.items():
            for b, (b0, b1) in offs.items():
                res.matrices[(a, b)] = full[a0:a1, b0:b1].copy()
        return res

    def save(self, work_dir):
        """Write ``similarity.npz`` then its index ``similarity.json`` (atomically)."""
        npz = osp.join(work_dir, 'similarity.npz')
        with atomic_write(npz, 'wb') as f:
            np.savez(f, all=self.full())
        index = dict(format=RESULT_FORMAT, type=self.type, seconds=self.seconds,
                     models=self.models, nodes=self.nodes,
                     offsets={m: list(o) for m, o in self.offsets().items()},
                     npz_sha256=file_digest(npz), meta=self.meta)
        atomic_save_json(index, osp.join(work_dir, 'similarity.json'))
        return npz

    @classmethod
    def load(cls, work_dir):
        """Read a saved result; raises ``ValueError`` if it is corrupted."""
        npz = osp.join(work_dir, 'similarity.npz')
        js = osp.join(work_dir, 'similarity.json')
        if not (osp.exists(npz) and osp.exists(js)):
            raise FileNotFoundError(f'no similarity result in {work_dir} (similarity.npz/.json)')
        try:
            with open(js) as f:
                index = json.load(f)
            if index.get('format') != RESULT_FORMAT:
                raise ConfigError(f'format {index.get("format")} is not {RESULT_FORMAT}')
            if file_digest(npz) != index['npz_sha256']:
                raise ConfigError('similarity.npz does not match the checksum in similarity.json')
            with np.load(npz) as data:
                full = data['all']
            nodes = OrderedDict((m, index['nodes'][m]) for m in index['models'])
            return cls.from_full(full, nodes, index['type'], index.get('seconds', 0.0),
                                 index.get('meta', {}))
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f'similarity result in {work_dir} is corrupted '
                             f'({type(e).__name__}: {e})') from None

    def __repr__(self):
        n = sum(len(v) for v in self.nodes.values())
        return (f'SimilarityResult(type={self.type!r}, models={len(self.nodes)}, nodes={n}, '
                f'seconds={self.seconds:.2f})')


# --------------------------------------------------------------------------
# progress bar
# --------------------------------------------------------------------------
_Progress = Progress  # rich bars on rank 0 (counts, elapsed, ETA); no-ops elsewhere


# --------------------------------------------------------------------------
# the zoo: built models, or a ZooCache that builds them on demand
# --------------------------------------------------------------------------
def _check_models(zoo_models):
    models = list(zoo_models)
    if not models:
        raise ConfigError('compute_similarity needs at least one zoo model')
    for m in models:
        for attr in ('name', 'nodes', 'node_outputs', 'model', 'input_size'):
            if not hasattr(m, attr):
                raise TypeError(f'zoo models must be dery.zoo.ZooModel objects; {m!r} has no '
                                f'`{attr}`')
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f'zoo model names must be unique; repeated: {dup}')
    return models


def _is_zoo_cache(obj):
    return all(hasattr(obj, a) for a in ('entries', 'names', 'release', 'identity', 'is_added'))


class _Zoo:
    """The models of one run, by name.

    A list of built :class:`~dery.zoo.ZooModel`: used as they are (the caller
    owns them). A :class:`~dery.zoo.ZooCache`: each model is built when its turn
    comes and released when its features are written (unless it was built
    before the stage started), so memory holds one model at a time. The cache
    identity of a model from its zoo entry (entry fields, weights file digest,
    pretrained, input size: what decides its weights) needs no build; a model
    given to the cache with ``ZooCache.add`` (or in a list) is identified by a
    digest of its weights (:func:`~dery.similarity.capture.model_key`).
    """

    def __init__(self, zoo_models):
        if _is_zoo_cache(zoo_models):
            self.zoo, self._given = zoo_models, {}
            self.names = list(zoo_models.names)
            if not self.names:
                raise ConfigError('compute_similarity needs at least one zoo model')
        else:
            models = _check_models(zoo_models)
            self.zoo, self._given = None, {m.name: m for m in models}
            self.names = [m.name for m in models]
        self._keys, self._ours = {}, set()

    def key(self, name):
        if name not in self._keys:
            if self.zoo is None or self.zoo.is_added(name):
                self._keys[name] = model_key(self.get(name))
            else:
                ident = self.zoo.identity([name])
                self._keys[name] = digest(dict(name=name, entry=ident['models'][name],
                                               pretrained=ident['pretrained'],
                                               input_size=ident['input_size'], format=FEATURE_FORMAT))
        return self._keys[name]

    def get(self, name):
        if self.zoo is None:
            return self._given[name]
        if not self.zoo.is_built(name):
            self._ours.add(name)
        return self.zoo[name]

    def release(self, name):
        """Free ``name`` if this stage built it (and the cache does not ask to keep it)."""
        if self.zoo is not None and name in self._ours:
            self._ours.discard(name)
            if not getattr(self.zoo, 'keep_built', False):
                self.zoo.release(name)

    def will_release(self, name):
        return self.zoo is not None and name in self._ours and not getattr(self.zoo, 'keep_built', False)

    def known_nodes(self, name):
        if self.zoo is None:
            return list(self._given[name].nodes)
        return self.zoo.known_nodes(name)

    def remember_nodes(self, name, nodes):
        if self.zoo is not None:
            self.zoo.remember_nodes(name, nodes)


def _device(opts):
    dev = opts['device']
    if dev in (None, 'auto'):
        return torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device('cpu')
    return torch.device(dev)


# --------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------
def _try_cached_result(work_dir, stamp, logger):
    if not osp.exists(osp.join(work_dir, 'similarity.json')):
        return None
    try:
        res = SimilarityResult.load(work_dir)
    except FileNotFoundError:
        return None
    except ValueError as e:
        logger.warning(f'similarity: {e}; recomputing it')
        return None
    why = stamp.why_different(res.meta.get('stamp'))
    if why is not None:
        logger.info(f'similarity: {why}; recomputing')
        return None
    return res


def _metric_on_arrays(metric, arrays, dims_list, batch_size):
    """Run ``metric`` zoo-wide on cached ``[n, sum(dims)]`` arrays."""
    cols = []
    for arr, dims in zip(arrays, dims_list):
        off = 0
        for d in dims:
            cols.append((arr, off, off + d))
            off += d
    metric.reset()
    if metric.streaming:
        n = arrays[0].shape[0]
        for r in range(0, n, batch_size):
            metric.update([torch.from_numpy(a[r:r + batch_size, s:e]) for a, s, e in cols])
    else:
        metric.update([torch.from_numpy(a[:, s:e]) for a, s, e in cols])
    return metric.compute().double().cpu().numpy()


def _metric_on_grams(metric, arrays, caches, probe):
    """``store='accumulators'``: one pass over the batches, the Gram matrices of all models at once."""
    B = probe.batch_size
    metric.reset()
    for t, ids in enumerate(probe.batches):
        b = len(ids)
        grams, scales, varying = [], [], []
        for arr, c in zip(arrays, caches):
            row = torch.from_numpy(np.asarray(arr[t])).view(len(c.dims), B * B + 2)
            grams.append(row[:, :B * B].reshape(-1, B, B)[:, :b, :b])
            scales.append(row[:, B * B])
            varying.append(row[:, B * B + 1])
        metric.update_grams(torch.cat(grams).to(metric.dtype), torch.cat(scales), torch.cat(varying))
    return metric.compute().double().cpu().numpy()


class _Stage:
    """One run of the stage on one rank (see the module docstring)."""

    def __init__(self, zoo, probe, metric, opts, work_dir, rank, world, logger, prog, on_nodes):
        self.zoo, self.probe, self.metric, self.opts = zoo, probe, metric, opts
        self.work_dir, self.rank, self.world, self.logger, self.prog = work_dir, rank, world, logger, prog
        self.on_nodes = on_nodes
        self.grams = opts['store'] == 'accumulators'
        self.root = osp.join(work_dir, 'similarity_cache', 'grams' if self.grams else 'features')
        self.device = _device(opts)
        self.times = dict(build_seconds=0.0, capture_seconds=0.0, probe_seconds=0.0)
        self.captured = []
        self.queue, self.done0 = None, 0

    def cache(self, name):
        key = digest(dict(model=self.zoo.key(name), probe=self.probe.key, pooling=self.metric.pooling,
                          format=FEATURE_FORMAT, **(dict(grams=self.metric.settings(), batch_size=self.probe.batch_size)
                                                    if self.grams else {})))
        if self.grams:
            return FeatureCache(self.root, name, key, len(self.probe), self.zoo.known_nodes(name), dtype=np.float64)
        return FeatureCache(self.root, name, key, self.probe.num_samples, self.zoo.known_nodes(name))

    # ------------------------------------------------------------ one model
    def build(self, name):
        t0 = time.perf_counter()
        zm = self.zoo.get(name)
        nodes = list(zm.nodes)
        self.zoo.remember_nodes(name, nodes)
        if self.on_nodes is not None:
            self.on_nodes(name, nodes)  # e.g. num_sets against the nodes: before the first forward
        self.times['build_seconds'] += time.perf_counter() - t0
        return zm

    def capture(self, zm, cache, task_models):
        """All remaining probe batches of one model into its cache; returns when it is finished."""
        probe, T, B = self.probe, len(self.probe), self.probe.batch_size
        cache.set_nodes(zm.nodes)
        start = cache.open(resume=self.opts['resume'])
        moved = None
        if self.device != _model_device(zm):
            moved = _model_device(zm)
            zm.model.to(self.device)
        task = self.prog.add(f'similarity: {zm.name}, batches', T, completed=start)
        t0 = time.perf_counter()
        last = start
        try:
            seed = int(self.zoo.key(zm.name)[:8], 16)
            cuda = [self.device.index or 0] if self.device.type == 'cuda' else []
            for t, x in probe.iter_batches(range(start, T)):
                # a model whose forward draws random numbers (e.g. MAE's token masking) sees the same ones
                # whatever ran before it, on whichever rank, resumed or not: seeded by model and batch
                with torch.random.fork_rng(devices=cuda):
                    torch.manual_seed(seed + t)
                    feats, dims = capture_batch(zm, x, self.metric.pooling, out_device=None, return_dims=True)
                if self.grams:
                    grams, scales, varying = self.metric.batch_grams(list(feats.split(dims, 1)))
                    b = grams.shape[1]
                    padded = torch.zeros(len(dims), B * B + 2, dtype=torch.float64)
                    full = torch.zeros(len(dims), B, B, dtype=torch.float64)
                    full[:, :b, :b] = grams.double().cpu()
                    padded[:, :B * B] = full.reshape(len(dims), -1)
                    padded[:, B * B], padded[:, B * B + 1] = scales, varying
                    cache.start([B * B + 2] * len(dims))
                    cache.write(t, padded.reshape(1, -1).numpy())
                else:
                    cache.start(dims)
                    cache.write(t * B, feats.float().cpu().numpy())
                done = t + 1
                if done - last >= self.opts['checkpoint_interval'] and done < T:
                    cache.checkpoint(done)
                    last = done
                self.prog.advance(task)
                self._poll(task_models)
            cache.finalize()
        finally:
            self.prog.remove(task)
            if moved is not None and not self.zoo.will_release(zm.name):
                zm.model.to(moved)  # back where the caller keeps it
        self.times['capture_seconds'] += time.perf_counter() - t0
        self.captured.append(zm.name)

    def _poll(self, task_models):
        if self.queue is not None and task_models is not None:
            self.prog.update(task_models, completed=self.done0 + self.queue.num_done())

    # ------------------------------------------------------------ all models
    def run(self):
        """Features (or Gram matrices) of every model: finished caches reused, the rest captured."""
        zoo, probe = self.zoo, self.probe
        names = zoo.names
        caches = {n: self.cache(n) for n in names}
        status = None
        if self.rank == 0:
            status = {}
            for n in names:
                arr = caches[n].load() if self.opts['resume'] else None
                status[n] = None if arr is None else caches[n].nodes
                del arr
        status = broadcast(status)
        for n, nodes in status.items():
            if nodes is not None:
                zoo.remember_nodes(n, nodes)
                caches[n].set_nodes(nodes)
        if self.on_nodes is not None:  # what is known without building anything
            for n in names:
                nodes = zoo.known_nodes(n)
                if nodes is not None:
                    self.on_nodes(n, nodes)
        todo = [n for n in names if status[n] is None]
        reused = [n for n in names if status[n] is not None]
        if self.rank == 0 and reused:
            self.logger.info(f'similarity: reusing cached {"Gram matrices" if self.grams else "features"} of '
                             f'{len(reused)} model(s): {", ".join(reused)}')
        self.queue, self.done0 = (WorkQueue(len(todo), 'similarity') if todo else None), len(reused)
        task_models = self.prog.add('similarity: models', len(names), completed=len(reused))
        t0 = time.perf_counter()
        if todo:
            first = self.queue.next()
            zm = None
            try:
                if first is not None:
                    self.prog.update(task_models, description=f'similarity: models (building {todo[first]})')
                    zm = self.build(todo[first])
                # the probe batches, once for the whole zoo (after the first model's checks)
                tp = time.perf_counter()
                pcache = ProbeCache(osp.join(self.work_dir, 'similarity_cache'), probe.key)
                if self.rank == 0:
                    task = self.prog.add('similarity: probe batches', len(probe))
                    probe.store(pcache, on_batch=lambda: self.prog.advance(task))
                    self.prog.remove(task)
                barrier()
                if self.rank != 0:
                    probe.store(pcache)  # reads rank 0's batches (writes its own when it cannot see them)
                self.times['probe_seconds'] += time.perf_counter() - tp
                i = first
                while i is not None:
                    name = todo[i]
                    if zm is None:
                        self.prog.update(task_models, description=f'similarity: models (building {name})')
                        zm = self.build(name)
                    self.prog.update(task_models, description='similarity: models')
                    self.capture(zm, caches[name], task_models)
                    zm = None
                    zoo.release(name)
                    self.queue.done()
                    self._poll(task_models)
                    i = self.queue.next()
            finally:
                if zm is not None:
                    zoo.release(zm.name)
                for n in list(zoo._ours):
                    zoo.release(n)
        barrier()
        self.times['features_seconds'] = time.perf_counter() - t0
        self.prog.update(task_models, completed=len(names), description='similarity: models')
        self._collect(todo, caches)
        return caches

    def _collect(self, todo, caches):
        """Rank 0 sees every finished cache: fetch those it cannot read (no shared file system)."""
        if self.world == 1:
            return
        mine = all_gather_object({n: (caches[n].nodes, caches[n].dims) for n in self.captured})
        owner = {n: r for r, got in enumerate(mine) for n in got}
        for got in mine:
            for n, (nodes, dims) in got.items():
                caches[n].set_nodes(nodes)
                caches[n].dims = dims
                self.zoo.remember_nodes(n, nodes)
        self.captured = [n for n in self.zoo.names if n in owner]
        missing = None
        if self.rank == 0:
            missing = [n for n in todo if caches[n].load(verify=False) is None]
        missing = broadcast(missing)
        for n in missing:
            src = owner.get(n)
            if src is None:
                raise RuntimeError(f'similarity: no rank captured the features of {n}')
            payload = None
            if self.rank == src:
                arr = caches[n].load(verify=False)
                payload = (np.ascontiguousarray(arr), caches[n].nodes, caches[n].dims)
            payload = broadcast(payload, src=src)
            if self.rank == 0:
                caches[n].install(*payload)
        barrier()

    def compute(self, caches):
        t1 = time.perf_counter()
        full = None
        if self.rank == 0:
            cs = [caches[n] for n in self.zoo.names]
            arrays = [c.load(verify=False) for c in cs]
            if any(a is None for a in arrays):  # pragma: no cover - written just above
                raise RuntimeError('similarity: a feature cache vanished while computing')
            if self.grams:
                full = _metric_on_grams(self.metric, arrays, cs, self.probe)
            else:
                full = _metric_on_arrays(self.metric, arrays, [c.dims for c in cs], self.probe.batch_size)
            del arrays
        full = broadcast(full)
        self.times['metric_seconds'] = time.perf_counter() - t1
        nodes = OrderedDict((n, list(caches[n].nodes)) for n in self.zoo.names)
        return full, nodes

    def cleanup(self, caches):
        """After a finished run: drop the stored probe batches, and (store='accumulators') the
        per-model Gram matrices, which only served this run."""
        if self.rank != 0:
            return
        root = osp.join(self.work_dir, 'similarity_cache')
        shutil.rmtree(osp.join(root, f'probe-{self.probe.key[:16]}'), ignore_errors=True)
        if self.grams:
            for c in caches.values():
                for path in (c.path, c.manifest, c.partial, c.progress):
                    if osp.exists(path):
                        os.remove(path)
            for d in (self.root, root):
                if osp.isdir(d) and not os.listdir(d):
                    os.rmdir(d)


def compute_similarity(zoo_models, probe_cfg, similarity_cfg, work_dir, launcher='none', on_nodes=None):
    """Functional similarity of every pair of nodes of every pair of zoo models.

    Args:
        zoo_models (ZooCache | list[ZooModel]): the zoo. A
            :class:`~dery.zoo.ZooCache` builds each model when its turn comes
            and releases it when its features are written (memory: one model
            at a time); a list of built models is used as it is.
        probe_cfg (dict): ``dataset`` (mmpretrain/DeRy dataset config or a
            built dataset), ``batch_size`` (32), ``num_workers`` (0),
            ``num_samples`` (None: 1/20 of the set, at least one batch; int; or
            fraction), ``seed`` (0), ``data_preprocessor`` (a
            ``ClsDataPreprocessor`` config; default ImageNet mean/std). Inputs
            are resized to each model's ``input_size`` when they differ.
        similarity_cfg (dict): the metric (``type`` + its arguments, e.g.
            ``dict(type='LinearCKA', pooling='avg')``) plus the pipeline
            options ``store``, ``checkpoint_interval``, ``plot``,
            ``progress``, ``resume``, ``device`` (see the module docstring).
        work_dir (str | None): where caches, ``similarity.npz/.json`` and plots
            go; ``None``: a temporary folder, nothing is kept.
        launcher (str): ``'none'`` or ``'pytorch'`` (torchrun), ``'slurm'``,
            ``'mpi'``.
        on_nodes (callable | None): ``on_nodes(name, nodes)`` for every model
            as soon as its node list is known (from a cache, or right after it
            is built, before its first forward pass); raise to stop the stage
            (the partition stage checks ``num_sets`` there).

    Returns:
        SimilarityResult: identical on every rank.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix='dery_similarity_') as tmp:
            return _compute_similarity(zoo_models, probe_cfg, similarity_cfg, tmp, launcher,
                                       persist=False, on_nodes=on_nodes)
    return _compute_similarity(zoo_models, probe_cfg, similarity_cfg, os.fspath(work_dir),
                               launcher, persist=True, on_nodes=on_nodes)


def _compute_similarity(zoo_models, probe_cfg, similarity_cfg, work_dir, launcher, persist, on_nodes):
    t_start = time.perf_counter()
    rank, world = init_dist(launcher)
    logger = get_logger()
    cfg = dict(similarity_cfg or {})
    cfg.setdefault('type', 'LinearCKA')
    opts = dict(store='features', checkpoint_interval=20, plot=True, progress=True, resume=True, device='auto')
    opts.update({k: cfg.pop(k) for k in PIPELINE_KEYS if k in cfg})
    if opts['store'] not in STORES:
        raise ConfigError(f'similarity store must be one of {STORES}, got {opts["store"]!r}')
    opts['checkpoint_interval'] = max(1, int(opts['checkpoint_interval']))
    metric = SIMILARITIES.build(cfg)
    if opts['store'] == 'accumulators' and not metric.streaming:
        raise ConfigError(f"store='accumulators' needs a streaming metric (MinibatchCKA); "
                          f"{type(metric).__name__} needs all samples: use store='features'")
    try:
        _device(opts)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"similarity device must be 'auto', 'cpu' or a torch device such as 'cuda:0', got "
                          f'{opts["device"]!r} ({e})') from None
    zoo = _Zoo(zoo_models)
    probe = ProbeSet(probe_cfg)
    if rank == 0:
        os.makedirs(work_dir, exist_ok=True)
    mkeys = [zoo.key(n) for n in zoo.names]
    settings = metric.settings()
    if metric.streaming:
        settings['batch_size'] = probe.batch_size
    stamp = Stamp('similarity', dict(models=dict(zip(zoo.names, mkeys)), probe=probe.identity,
                                     metric=settings, store=opts['store']))
    key = stamp.digest

    cached = _try_cached_result(work_dir, stamp, logger) \
        if rank == 0 and opts['resume'] and persist else None
    cached = broadcast(cached)
    if cached is not None:
        if on_nodes is not None:
            for n, ns in cached.nodes.items():
                on_nodes(n, ns)
        for n, ns in cached.nodes.items():
            zoo.remember_nodes(n, ns)
        if rank == 0:
            logger.info(f'similarity: reusing {osp.join(work_dir, "similarity.npz")} '
                        f'({cached.type}, {len(zoo.names)} models)')
            if opts['plot'] and not osp.exists(osp.join(work_dir, 'similarity_summary.png')):
                _plot(cached, work_dir, opts['plot'], metric.symmetric)
        cached.meta['cached'] = True
        return cached

    if rank == 0:
        known = [zoo.known_nodes(n) for n in zoo.names]
        nodes_txt = f'{sum(len(k) for k in known)} nodes' if all(k is not None for k in known) else 'one at a time'
        logger.info(f'similarity: {metric!r} on {len(zoo.names)} models ({nodes_txt}), {probe.num_samples} probe '
                    f'samples in {len(probe)} batches of {probe.batch_size}, store={opts["store"]}, '
                    f'device={_device(opts).type}, {world} process(es)')
    with _Progress(opts['progress'] and rank == 0) as prog:
        stage = _Stage(zoo, probe, metric, opts, work_dir, rank, world, logger, prog, on_nodes)
        caches = stage.run()
        full, nodes = stage.compute(caches)
    times = {k: round(v, 3) for k, v in stage.times.items()}
    meta = dict(key=key, stamp=stamp.to_json(), metric=settings, store=opts['store'], world_size=world,
                probe=dict(num_samples=probe.num_samples, batch_size=probe.batch_size,
                           seed=probe.seed, key=probe.key),
                models=dict(zip(zoo.names, mkeys)), cached=False, captured=stage.captured, **times)
    result = SimilarityResult.from_full(full, nodes, type(metric).__name__,
                                        time.perf_counter() - t_start, meta)
    if rank == 0:
        stage.cleanup(caches)
        if persist:
            result.save(work_dir)
            if opts['plot']:
                t_plot = time.perf_counter()
                _plot(result, work_dir, opts['plot'], metric.symmetric, opts['progress'])
                result.meta['plot_seconds'] = round(time.perf_counter() - t_plot, 3)
        logger.info(f'similarity: done in {result.seconds:.1f} s (building models {times["build_seconds"]:.1f} s, '
                    f'features {times["capture_seconds"]:.1f} s, metric {times["metric_seconds"]:.1f} s)' +
                    (f'; wrote {osp.join(work_dir, "similarity.npz")}' if persist else ''))
    barrier()
    return result


def _plot(result, work_dir, plot, symmetric, progress=False):
    from .plot import num_plots, save_plots
    pairs = plot is True or plot == 'pairs'
    with _Progress(progress) as prog:
        task = prog.add('similarity: heatmaps', num_plots(len(result.models), pairs, symmetric))
        save_plots(result, work_dir, pairs=pairs, symmetric=symmetric, on_file=lambda: prog.advance(task))


__all__ = ['compute_similarity', 'SimilarityResult']
