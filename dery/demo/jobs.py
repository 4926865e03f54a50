"""The demo's training runs: job records and their cache keys, the worker pool, the runs' logs.

Every training run (a zoo pre-training, a fine-tune) is a job: a plain config
dict and a work dir, keyed on that config (``work_dir`` left out) plus what
else its result depends on. A pool of worker processes, forked once from the
parent before any thread starts, runs each job with mmengine's ``Runner``
(what tools/train.py does, :func:`dery.calibration.runs.train_run`) and writes
``RUN_DIR/run_result.json``; a later demo (or the proxy calibration, whose runs
are the same records) reuses that result while its key matches
(:func:`cached_result`). In the results the demo keeps, ``scalars`` is
relative to the demo's work dir (:func:`for_root`).

The progress bars of the parent read a shared array of iteration counters,
one slot per job (:class:`Pool` creates it, the forked workers inherit it).
"""
import multiprocessing as mp
import os.path as osp
import sys

from dery.calibration.runs import (WorkerPool, cached_run, find_scalars, init_worker, job_config, make_run,
                                   read_scalars, run_key, train_run)

__all__ = ['digest', 'job_config', 'Pool', 'cached_result', 'for_root', 'counter_hook', 'find_scalars', 'read_scalars']

NUM_SLOTS = 512

# the shared iteration counters in a worker process (set by _worker_init)
_COUNTERS = None


def digest(obj, n=12):
    """A short stable hash of a JSON-able value (the cache keys of runs and zoo weights)."""
    return run_key(obj, n)


def for_root(job, out):
    """A run's result with ``scalars`` relative to the demo's work dir (``job['root']``)."""
    if out is None or not job.get('root'):
        return out
    return dict(out, scalars=osp.relpath(osp.join(job['work_dir'], out['scalars']), job['root']))


def cached_result(job, rerun=False):
    """The result of a finished run of ``job`` (same key, its scalars still there), else None."""
    return for_root(job, cached_run(job, rerun))


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
    global _COUNTERS
    _COUNTERS = counters
    init_worker(log_dir, threads)


def _run_job(job):
    """One training run with mmengine's Runner (what tools/train.py does), in a worker process."""
    sys.stdout.write(f'=== {job["name"]}\n')  # the worker's log file (see _worker_init)
    sys.stdout.flush()
    after = None
    if job.get('export'):
        from .export import export_zoo_weights

        def after(runner):
            export_zoo_weights(runner.model.backbone, job['export']['entry'], job['export']['path'],
                               job['export']['input_size'])
    out = train_run(job, hooks=[counter_hook(_COUNTERS, job['slot'])], after_train=after)
    _COUNTERS[job['slot']] = -1
    return out


# ---------------------------------------------------------------------------- parent side
class Pool(WorkerPool):
    """Worker processes (forked once, before any thread starts) running the jobs of one demo work dir."""

    def __init__(self, root, jobs, threads):
        self.root = root
        self.counters = mp.get_context('fork').Array('i', NUM_SLOTS, lock=False)
        log_dir = osp.join(root, 'logs')
        super().__init__(jobs, log_dir, _worker_init, (log_dir, threads, self.counters))
        self.pending = []
        self._slot = 0

    def job(self, name, kind, desc, cfg, run_dir, key_extra, seed=None, export=None, **fields):
        """A job record (:func:`dery.calibration.runs.make_run`: config, run dir, result file, cache key)
        with its progress slot."""
        self._slot += 1
        if self._slot >= len(self.counters):
            raise RuntimeError('too many training runs for the progress counters')
        return make_run(name, cfg, run_dir, key_extra, seed=seed, kind=kind, desc=desc, export=export,
                        root=self.root, slot=self._slot, **fields)

    def adopt(self, run, **fields):
        """A job of a run record made elsewhere (:func:`dery.calibration.runs.make_run`: its key kept),
        with a progress slot."""
        self._slot += 1
        if self._slot >= len(self.counters):
            raise RuntimeError('too many training runs for the progress counters')
        return dict(run, root=self.root, slot=self._slot, **fields)

    def mark_done(self, job):
        """A job whose result is cached: its progress bar is full."""
        self.counters[job['slot']] = -1

    def submit(self, job):
        res = self.pool.apply_async(_run_job, (job, ))
        self.pending.append((job, res))
        return res

    def wait(self, results, ui, only=None):
        """Collect the submitted jobs (every one, or those named in ``only``; in completion order) into
        ``results``; log one line per finished run. Jobs not waited for stay pending."""
        todo = [(j, r) for j, r in self.pending if only is None or j['name'] in only]
        self.pending = [(j, r) for j, r in self.pending if not (only is None or j['name'] in only)]
        for job, out in self.finished(todo):
            results[job['name']] = out = for_root(job, out)
            ui.log(f'  {job["desc"]}: top-1 {out["top1"]:.2f}% ({out["seconds"]:.1f} s)')
