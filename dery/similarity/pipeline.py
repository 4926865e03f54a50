"""Stage 1 of ``tools/partition.py``: functional similarity of all zoo nodes.

``compute_similarity(zoo_models, probe_cfg, similarity_cfg, work_dir)`` runs
every zoo model once over the probe set and returns a :class:`SimilarityResult`
with a node-by-node matrix for every ordered model pair.

How the work is organised (one pass over the data, batch loop outside, model
loop inside, so each probe batch is loaded and normalised once for the whole
zoo):

* ``store='features'`` (default): each model's pooled node outputs (one
  vector per node and sample, ``num_samples x sum(dims)`` float32) are
  written straight into a memory-mapped per-model cache file; the metric then
  runs on the cached features: exact metrics (``LinearCKA``...) on all samples
  at once (they hold the pooled features in memory, ``n x D`` values), the
  streaming ``MinibatchCKA`` batch by batch from the memory map (memory: one
  batch plus ``N x N`` accumulators). Finished models are reused by any later
  run with the same model, probe data and pooling (also after adding models
  to the zoo or switching metric); a killed run resumes each unfinished
  model from its last checkpoint (``checkpoint_interval`` batches).
* ``store='accumulators'`` (``MinibatchCKA`` only): no feature files at all;
  every batch updates zoo-wide ``N x N`` accumulators directly, checkpointed
  every ``checkpoint_interval`` batches. Memory and disk do not grow with the
  probe set, whatever the pooling (use it for ``pooling='flatten'``).

Distributed (``launcher='pytorch'`` under torchrun, or an initialised
process group): the global batches are dealt round-robin to the ranks;
``store='features'`` gathers the pooled features of each step to rank 0,
which writes the caches and computes the metric; ``store='accumulators'``
all-reduces (sums) the accumulators. Both equal the single-process result
(up to float summation order).

Options in ``similarity_cfg`` besides the metric's own arguments:
``store`` ('features' | 'accumulators'), ``checkpoint_interval`` (batches,
default 20), ``plot`` (True: summary + one heatmap per model pair;
'summary'; False), ``progress`` (rich progress bar on rank 0, default True),
``resume`` (reuse caches, default True).

Outputs: ``WORK_DIR/similarity.npz`` (``all``: the ``[N, N]`` matrix over the
nodes of all models in zoo order) + ``WORK_DIR/similarity.json`` (models,
node names, offsets, metric settings, cache key, timings),
``WORK_DIR/similarity_summary.png`` and ``WORK_DIR/similarity/<a>__<b>.png``.
"""
import json
import os
import os.path as osp
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from mmengine.dist import all_reduce, barrier, gather, get_comm_device

from dery.errors import ConfigError
from dery.registry import SIMILARITIES
from dery.utils import atomic_save_json, atomic_write, file_digest, get_logger, safe_torch_load
from dery.utils.dist import broadcast, init_dist
from dery.utils.stamp import Stamp
from .cache import FeatureCache
from .capture import (FEATURE_FORMAT, ProbeSet, _model_device, capture_batch, capture_nodes,
                      digest, model_key, num_steps)

RESULT_FORMAT = 1
PIPELINE_KEYS = ('store', 'checkpoint_interval', 'plot', 'progress', 'resume')
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
class _Progress:

    def __init__(self, enabled):
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._p = Progress(TextColumn('{task.description}'), BarColumn(),
                               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())

    def __enter__(self):
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()

    def add(self, desc, total, completed=0):
        return None if self._p is None else self._p.add_task(desc, total=total, completed=completed)

    def advance(self, task, n=1):
        if self._p is not None and task is not None:
            self._p.advance(task, n)


# --------------------------------------------------------------------------
# the stage
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


def _run_features(models, mkeys, probe, metric, opts, work_dir, rank, world, logger, prog):
    root = osp.join(work_dir, 'similarity_cache', 'features')
    caches = []
    for m, mk in zip(models, mkeys):
        fkey = digest(dict(model=mk, probe=probe.key, pooling=metric.pooling,
                           format=FEATURE_FORMAT))
        caches.append(FeatureCache(root, m.name, fkey, probe.num_samples, m.nodes))
    starts = None
    if rank == 0:
        starts = []
        for c in caches:
            arr = c.load() if opts['resume'] else None
            starts.append(None if arr is not None else c.open(resume=opts['resume']))
            del arr
    starts = broadcast(starts)
    todo = [i for i, s in enumerate(starts) if s is not None]
    if rank == 0:
        reused = [models[i].name for i, s in enumerate(starts) if s is None]
        if reused:
            logger.info(f'similarity: reusing cached features of {len(reused)} model(s): '
                        f'{", ".join(reused)}')
    t0 = time.perf_counter()
    task_models = prog.add('similarity: models', len(models), completed=len(models) - len(todo))
    if todo:
        _capture_features(models, caches, todo, starts, probe, metric.pooling, rank, world,
                          opts['checkpoint_interval'], prog)
    prog.advance(task_models, len(todo))
    barrier()
    t1 = time.perf_counter()
    full = None
    if rank == 0:
        arrays = [c.load(verify=False) for c in caches]
        if any(a is None for a in arrays):  # pragma: no cover - written just above
            raise RuntimeError('similarity: a feature cache vanished while computing')
        full = _metric_on_arrays(metric, arrays, [c.dims for c in caches], probe.batch_size)
        del arrays
    full = broadcast(full)
    return full, dict(capture_seconds=t1 - t0, metric_seconds=time.perf_counter() - t1,
                      captured=[models[i].name for i in todo])


def _capture_features(models, caches, todo, starts, probe, pooling, rank, world, interval, prog):
    T, B = len(probe), probe.batch_size
    start = min(starts[i] for i in todo)
    steps = num_steps(start, T, world)
    mine = [t for t in (start + s * world + rank for s in range(steps)) if t < T]
    batches = probe.iter_batches(mine)
    widths = None  # pooled feature sizes per model: known after the first batch
    task = prog.add(f'similarity: features of {len(todo)} model(s), batches', T - start)
    last_ckpt = start
    for s in range(steps):
        t_mine = start + s * world + rank
        got, dims_here, b = {}, {}, 0
        if t_mine < T:
            t, x = next(batches)
            assert t == t_mine
            b = len(x)
            for i in todo:
                if t >= starts[i]:
                    got[i], dims_here[i] = capture_batch(models[i], x, pooling, return_dims=True)
        if widths is None:  # rank 0 always has the first batch
            dims = None
            if rank == 0:
                dims = [dims_here.get(i, caches[i].dims) for i in todo]
                for i, d in zip(todo, dims):
                    caches[i].start(d)
            dims = broadcast(dims)
            widths = [sum(d) for d in dims]
        total_w = sum(widths)
        feats = torch.cat([got[i] if i in got else torch.zeros(b, w)
                           for i, w in zip(todo, widths)], 1)
        if world > 1:
            padded = torch.zeros(B, total_w)
            padded[:len(feats)] = feats
            # on the backend's device (gloo: CPU, nccl: the GPU), back on the CPU on rank 0
            gathered = [g.cpu() for g in gather(padded.to(get_comm_device()), dst=0)]
        else:
            gathered = [feats]
        done = min(T, start + (s + 1) * world)
        if rank == 0:
            for q, g in enumerate(gathered):
                t = start + s * world + q
                if t >= T:
                    continue
                rows = g[:len(probe.batches[t])].numpy()
                col = 0
                for i, w in zip(todo, widths):
                    if t >= starts[i]:
                        caches[i].write(t * B, rows[:, col:col + w])
                    col += w
            if done - last_ckpt >= interval and done < T:
                for i in todo:
                    caches[i].checkpoint(max(starts[i], done))
                last_ckpt = done
        prog.advance(task, done - min(T, start + s * world))
    if rank == 0:
        for i in todo:
            caches[i].finalize()


def _run_accumulators(models, probe, metric, key, opts, work_dir, rank, world, logger, prog):
    if not metric.streaming:
        raise ConfigError(f"store='accumulators' needs a streaming metric (MinibatchCKA); "
                         f"{type(metric).__name__} needs all samples: use store='features'")
    T = len(probe)
    num_nodes = sum(len(m.nodes) for m in models)
    device = _model_device(models[0])
    ckpt = osp.join(work_dir, 'similarity_cache', f'stream-{key[:16]}.pth')
    metric.reset()
    metric.init_state(num_nodes, device=device)
    start = 0
    if rank == 0 and opts['resume'] and osp.exists(ckpt):
        try:
            sd = safe_torch_load(ckpt)
            if sd.get('key') != key:
                raise ConfigError('key mismatch')
            metric.load_state_dict(sd['metric'])
            metric.to(device)
            start = int(sd['batches_done'])
            logger.info(f'similarity: resuming the accumulators at batch {start}/{T}')
        except Exception as e:  # noqa: BLE001
            logger.warning(f'similarity: accumulator checkpoint {ckpt} is unusable '
                           f'({type(e).__name__}: {e}); starting over')
            metric.reset()
            metric.init_state(num_nodes, device=device)
            start = 0
    elif rank == 0 and osp.exists(ckpt):
        os.remove(ckpt)
    start = broadcast(start)
    steps = num_steps(start, T, world)
    mine = [t for t in (start + s * world + rank for s in range(steps)) if t < T]
    batches = probe.iter_batches(mine)
    task_models = prog.add('similarity: models', len(models))
    task = prog.add(f'similarity: {len(models)} model(s), batches', T - start)
    t0 = time.perf_counter()
    last_ckpt = start
    for s in range(steps):
        if start + s * world + rank < T:
            _, x = next(batches)
            feats = []
            for m in models:
                feats += [f.to(device) for f in capture_nodes(m, x, metric.pooling)]
            metric.update(feats)
        done = min(T, start + (s + 1) * world)
        if done - last_ckpt >= opts['checkpoint_interval'] and done < T:
            acc = list(metric.accumulators().values())
            for a in acc:
                all_reduce(a, op='sum')
            if rank == 0:
                with atomic_write(ckpt, 'wb') as f:
                    torch.save(dict(key=key, batches_done=done, metric=metric.state_dict()), f)
            else:
                for a in acc:
                    a.zero_()
            last_ckpt = done
        prog.advance(task, done - min(T, start + s * world))
    for a in metric.accumulators().values():
        all_reduce(a, op='sum')
    prog.advance(task_models, len(models))
    t1 = time.perf_counter()
    full = metric.compute().double().cpu().numpy()
    return full, dict(capture_seconds=t1 - t0, metric_seconds=time.perf_counter() - t1,
                      captured=[m.name for m in models], checkpoint=ckpt)


def compute_similarity(zoo_models, probe_cfg, similarity_cfg, work_dir, launcher='none'):
    """Functional similarity of every pair of nodes of every pair of zoo models.

    Args:
        zoo_models (list[ZooModel]): the zoo (unique names).
        probe_cfg (dict): ``dataset`` (mmpretrain/DeRy dataset config or a
            built dataset), ``batch_size`` (32), ``num_workers`` (0),
            ``num_samples`` (None: 1/20 of the set, at least one batch; int; or
            fraction), ``seed`` (0), ``data_preprocessor`` (a
            ``ClsDataPreprocessor`` config; default ImageNet mean/std). Inputs
            are resized to each model's ``input_size`` when they differ.
        similarity_cfg (dict): the metric (``type`` + its arguments, e.g.
            ``dict(type='LinearCKA', pooling='avg')``) plus the pipeline
            options ``store``, ``checkpoint_interval``, ``plot``,
            ``progress``, ``resume`` (see the module docstring).
        work_dir (str | None): where caches, ``similarity.npz/.json`` and plots
            go; ``None``: a temporary folder, nothing is kept.
        launcher (str): ``'none'`` or ``'pytorch'`` (torchrun), ``'slurm'``,
            ``'mpi'``.

    Returns:
        SimilarityResult: identical on every rank.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix='dery_similarity_') as tmp:
            return _compute_similarity(zoo_models, probe_cfg, similarity_cfg, tmp, launcher,
                                       persist=False)
    return _compute_similarity(zoo_models, probe_cfg, similarity_cfg, os.fspath(work_dir),
                               launcher, persist=True)


def _compute_similarity(zoo_models, probe_cfg, similarity_cfg, work_dir, launcher, persist):
    t_start = time.perf_counter()
    rank, world = init_dist(launcher)
    logger = get_logger()
    cfg = dict(similarity_cfg or {})
    cfg.setdefault('type', 'LinearCKA')
    opts = dict(store='features', checkpoint_interval=20, plot=True, progress=True, resume=True)
    opts.update({k: cfg.pop(k) for k in PIPELINE_KEYS if k in cfg})
    if opts['store'] not in STORES:
        raise ConfigError(f'similarity store must be one of {STORES}, got {opts["store"]!r}')
    opts['checkpoint_interval'] = max(1, int(opts['checkpoint_interval']))
    metric = SIMILARITIES.build(cfg)
    models = _check_models(zoo_models)
    probe = ProbeSet(probe_cfg)
    if rank == 0:
        os.makedirs(work_dir, exist_ok=True)
    mkeys = [model_key(m) for m in models]
    settings = metric.settings()
    if metric.streaming:
        settings['batch_size'] = probe.batch_size
    stamp = Stamp('similarity', dict(models={m.name: k for m, k in zip(models, mkeys)}, probe=probe.identity,
                                     metric=settings, store=opts['store']))
    key = stamp.digest
    nodes = OrderedDict((m.name, list(m.nodes)) for m in models)

    cached = _try_cached_result(work_dir, stamp, logger) \
        if rank == 0 and opts['resume'] and persist else None
    cached = broadcast(cached)
    if cached is not None:
        if rank == 0:
            logger.info(f'similarity: reusing {osp.join(work_dir, "similarity.npz")} '
                        f'({cached.type}, {len(models)} models)')
            if opts['plot'] and not osp.exists(osp.join(work_dir, 'similarity_summary.png')):
                _plot(cached, work_dir, opts['plot'], metric.symmetric)
        cached.meta['cached'] = True
        return cached

    if rank == 0:
        logger.info(f'similarity: {metric!r} on {len(models)} models '
                    f'({sum(len(n) for n in nodes.values())} nodes), {probe.num_samples} probe '
                    f'samples in {len(probe)} batches of {probe.batch_size}, '
                    f'store={opts["store"]}, '
                    f'{world} process(es)')
    with _Progress(opts['progress'] and rank == 0) as prog:
        if opts['store'] == 'accumulators':
            full, info = _run_accumulators(models, probe, metric, key, opts, work_dir, rank,
                                           world, logger, prog)
        else:
            full, info = _run_features(models, mkeys, probe, metric, opts, work_dir, rank,
                                       world, logger, prog)
    meta = dict(key=key, stamp=stamp.to_json(), metric=settings, store=opts['store'], world_size=world,
                probe=dict(num_samples=probe.num_samples, batch_size=probe.batch_size,
                           seed=probe.seed, key=probe.key),
                models={m.name: k for m, k in zip(models, mkeys)}, cached=False,
                capture_seconds=info['capture_seconds'], metric_seconds=info['metric_seconds'],
                captured=info['captured'])
    result = SimilarityResult.from_full(full, nodes, type(metric).__name__,
                                        time.perf_counter() - t_start, meta)
    if rank == 0:
        if info.get('checkpoint') and osp.exists(info['checkpoint']):
            os.remove(info['checkpoint'])
        if persist:
            result.save(work_dir)
            if opts['plot']:
                t_plot = time.perf_counter()
                _plot(result, work_dir, opts['plot'], metric.symmetric)
                result.meta['plot_seconds'] = time.perf_counter() - t_plot
        logger.info(f'similarity: done in {result.seconds:.1f} s (features '
                    f'{info["capture_seconds"]:.1f} s, metric {info["metric_seconds"]:.1f} s)' +
                    (f'; wrote {osp.join(work_dir, "similarity.npz")}' if persist else ''))
    barrier()
    return result


def _plot(result, work_dir, plot, symmetric):
    from .plot import save_plots
    save_plots(result, work_dir, pairs=plot is True or plot == 'pairs', symmetric=symmetric)


__all__ = ['compute_similarity', 'SimilarityResult']
