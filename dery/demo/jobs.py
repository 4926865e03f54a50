"""The demo's training runs: job records and their cache keys, the worker pool, the runs' logs.

Every training run (a zoo pre-training, a fine-tune) is a job: a plain config
dict and a work dir, keyed on that config (``work_dir`` left out) plus what
else its result depends on. A pool of worker processes, forked once from the
parent before any thread starts, runs each job with mmengine's ``Runner``
(what tools/train.py does) and writes ``RUN_DIR/demo_result.json``; a later
demo reuses that result while its key matches (:func:`cached_result`).

The progress bars of the parent read a shared array of iteration counters,
one slot per job (:class:`Pool` creates it, the forked workers inherit it).
"""
import copy
import hashlib
import json
import multiprocessing as mp
import os
import os.path as osp
import signal
import sys
import time

__all__ = ['digest', 'job_config', 'Pool', 'cached_result', 'counter_hook', 'find_scalars', 'read_scalars']

NUM_SLOTS = 256

# the shared iteration counters in a worker process (set by _worker_init)
_COUNTERS = None


def digest(obj, n=12):
    """A short stable hash of a JSON-able value (the cache keys of runs and zoo weights)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def job_config(cfg):
    """A config as the plain dict a job carries and its key hashes (without ``work_dir``)."""
    from dery.utils import to_plain
    cfgd = to_plain(cfg)
    cfgd.pop('work_dir', None)
    return cfgd


# ---------------------------------------------------------------------------- run logs
def find_scalars(log_dir):
    path = osp.join(log_dir, 'vis_data', 'scalars.json')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: the run wrote no scalars (LocalVisBackend)')
    return path


def read_scalars(path):
    """``dict(loss=[[step, value]], top1=[[step, value]])`` from an mmengine ``scalars.json``."""
    loss, top1 = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if 'accuracy/top1' in rec:
                top1.append([int(rec['step']), float(rec['accuracy/top1'])])
            elif 'loss' in rec:
                loss.append([int(rec['step']), float(rec['loss'])])
    return dict(loss=loss, top1=top1)


def cached_result(job, rerun=False):
    """The result of a finished run of ``job`` (same key, its scalars still there), else None."""
    if rerun or not osp.isfile(job['result_file']):
        return None
    try:
        with open(job['result_file']) as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    if out.get('key') != job['key'] or not osp.isfile(osp.join(job['root'], out.get('scalars', ''))):
        return None
    return out


# ---------------------------------------------------------------------------- worker side
def counter_hook(counters, slot):
    """An mmengine hook writing the current iteration into ``counters[slot]`` (the parent's progress bars)."""
    from mmengine.hooks import Hook

    class SharedCounterHook(Hook):
        priority = 'VERY_LOW'

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            counters[slot] = runner.iter + 1

    return SharedCounterHook()


def _worker_init(log_dir, threads, counters):
    """Each worker: one torch thread pool of ``threads``, its console into a log file, Ctrl-C to the parent."""
    import torch
    global _COUNTERS
    _COUNTERS = counters
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    os.makedirs(log_dir, exist_ok=True)
    f = open(osp.join(log_dir, f'worker_{os.getpid()}.log'), 'a', buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    # The Runner formats its config with yapf (log + dump): ~1 s per call, several calls per run, more
    # than a demo fine-tune's training. The text stays valid Python, only unformatted.
    import mmengine.config.config as mmcfg
    mmcfg.FormatCode = lambda text, *a, **k: (text, False)


def _run_job(job):
    """One training run with mmengine's Runner (what tools/train.py does), in a worker process."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from dery.utils import atomic_save_json
    t0 = time.perf_counter()
    sys.stdout.write(f'=== {job["name"]}\n')  # the worker's log file (see _worker_init)
    sys.stdout.flush()
    cfg = Config(copy.deepcopy(job['cfg']))
    cfg.work_dir = job['work_dir']
    cfg.experiment_name = job['name']
    runner = Runner.from_cfg(cfg)
    runner.register_hook(counter_hook(_COUNTERS, job['slot']))
    runner.train()
    scalars = find_scalars(runner.log_dir)
    curve = read_scalars(scalars)
    if not curve['top1'] or curve['top1'][-1][0] != cfg.train_cfg.max_iters:
        raise RuntimeError(f'{job["name"]}: no test accuracy at the last iteration in {scalars}')
    out = dict(name=job['name'], kind=job['kind'], key=job['key'], seed=job.get('seed'),
               top1=curve['top1'][-1][1], curve=curve, scalars=osp.relpath(scalars, job['root']),
               max_iters=cfg.train_cfg.max_iters)
    if job.get('export'):
        from .export import export_zoo_weights
        export_zoo_weights(runner.model.backbone, job['export']['entry'], job['export']['path'],
                           job['export']['input_size'])
    out['seconds'] = round(time.perf_counter() - t0, 2)
    atomic_save_json(out, job['result_file'])
    _COUNTERS[job['slot']] = -1
    del runner
    return out


# ---------------------------------------------------------------------------- parent side
class Pool:
    """Worker processes (forked once, before any thread starts) running the jobs of one demo work dir."""

    def __init__(self, root, jobs, threads):
        ctx = mp.get_context('fork')
        self.root = root
        self.log_dir = osp.join(root, 'logs')
        self.counters = ctx.Array('i', NUM_SLOTS, lock=False)
        self.pool = ctx.Pool(jobs, initializer=_worker_init, initargs=(self.log_dir, threads, self.counters))
        self.pids = self._pids()
        self.pending = []
        self._slot = 0

    def _pids(self):
        return {p.pid for p in getattr(self.pool, '_pool', [])}

    def job(self, name, kind, desc, cfg, run_dir, key_extra, seed=None, export=None):
        """A job record: its config, run dir, result file, progress slot and cache key."""
        self._slot += 1
        if self._slot >= len(self.counters):
            raise RuntimeError('too many training runs for the progress counters')
        cfgd = job_config(cfg)
        return dict(name=name, kind=kind, desc=desc, cfg=cfgd, work_dir=run_dir, seed=seed, export=export,
                    result_file=osp.join(run_dir, 'demo_result.json'), root=self.root, slot=self._slot,
                    key=digest(dict(cfg=cfgd, extra=key_extra)))

    def mark_done(self, job):
        """A job whose result is cached: its progress bar is full."""
        self.counters[job['slot']] = -1

    def submit(self, job):
        res = self.pool.apply_async(_run_job, (job, ))
        self.pending.append((job, res))
        return res

    def wait(self, results, ui):
        """Collect every submitted job (in completion order); log one line per finished run."""
        from dery.errors import DeryError
        todo = list(self.pending)
        self.pending = []
        while todo:
            for job, res in list(todo):
                if res.ready():
                    todo.remove((job, res))
                    try:
                        out = res.get()
                    except Exception as e:
                        raise DeryError(f'training run {job["name"]} failed ({type(e).__name__}: {e}); '
                                        f'see the logs under {job["work_dir"]} and {self.log_dir}/') from e
                    results[job['name']] = out
                    ui.log(f'  {job["desc"]}: top-1 {out["top1"]:.2f}% ({out["seconds"]:.1f} s)')
            if todo and self._pids() != self.pids:  # workers live until close(): one was killed
                raise DeryError('a training worker process died (killed, or out of memory?) while '
                                f'running {", ".join(j["name"] for j, _ in todo)}; see {self.log_dir}/')
            time.sleep(0.2)

    def close(self):
        self.pool.close()
        self.pool.join()

    def terminate(self):
        self.pool.terminate()
        self.pool.join()
