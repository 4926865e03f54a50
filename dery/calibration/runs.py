"""Training runs with a result file: keyed configs, the finished-run cache, one run with mmengine's Runner.

A run is a plain dict: ``name``, ``cfg`` (a plain config dict, ``work_dir``
left out), ``work_dir``, ``key`` (a hash of the config and of whatever else
its result depends on, e.g. the initial weights), ``result_file``
(``WORK_DIR/run_result.json``) and ``seed``. :func:`train_run` trains it as
tools/train.py does and writes the result (top-1 at the last iteration, the
curves); :func:`cached_run` returns that result while the key matches, so a
finished run is never trained twice. The demo's worker pool
(:mod:`dery.demo.jobs`) runs the same records.
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

__all__ = ['RESULT_FILE', 'run_key', 'job_config', 'make_run', 'cached_run', 'train_run', 'find_scalars',
           'read_scalars', 'serial_executor', 'RunPool', 'quiet_config_format', 'init_worker']

RESULT_FILE = 'run_result.json'


def run_key(obj, n=12):
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def job_config(cfg):
    """A config as the plain dict a run carries and its key hashes (without ``work_dir``)."""
    from dery.utils import to_plain
    cfgd = copy.deepcopy(to_plain(cfg))
    cfgd.pop('work_dir', None)
    return cfgd


def make_run(name, cfg, run_dir, key_extra=None, seed=None, **fields):
    """A run record (see the module docstring); ``fields`` are kept as they are (``kind``, ``desc``...)."""
    cfgd = job_config(cfg)
    return dict(fields, name=name, cfg=cfgd, work_dir=run_dir, seed=seed, key_extra=key_extra,
                result_file=osp.join(run_dir, RESULT_FILE), key=run_key(dict(cfg=cfgd, extra=key_extra)))


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


def cached_run(run, rerun=False):
    """The result of a finished run of ``run`` (same key, its scalars still there), else None."""
    if rerun or not osp.isfile(run['result_file']):
        return None
    try:
        with open(run['result_file']) as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    if out.get('key') != run['key'] or not osp.isfile(osp.join(run['work_dir'], out.get('scalars', ''))):
        return None
    return out


def train_run(run, hooks=(), after_train=None):
    """Train ``run`` with mmengine's Runner (what tools/train.py does); its result dict, also written to
    ``run['result_file']``: ``top1`` (the test accuracy after the last iteration), ``curve`` (losses
    and accuracies), ``scalars`` (relative to the run dir), ``max_iters``, ``seconds``.

    ``hooks``: extra mmengine hooks; ``after_train(runner)``: called after training (e.g. an export).
    """
    from mmengine.config import Config
    from mmengine.runner import Runner

    from dery.utils import atomic_save_json
    t0 = time.perf_counter()
    cfg = Config(copy.deepcopy(run['cfg']))
    cfg.work_dir = run['work_dir']
    # mmengine keeps one logger and one visualizer per experiment name in a process: a name used twice in a
    # worker would write the second run's log and scalars into the first run's files
    cfg.experiment_name = f'{run["name"]}@{os.getpid()}.{time.time_ns()}'
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()
    scalars = find_scalars(runner.log_dir)
    curve = read_scalars(scalars)
    max_iters = int(cfg.train_cfg.max_iters)
    if not curve['top1'] or curve['top1'][-1][0] != max_iters:
        metrics = runner.val()  # the schedule did not end on a validation
        if 'accuracy/top1' not in (metrics or {}):
            raise RuntimeError(f'{run["name"]}: no accuracy/top1 from the validation ({sorted(metrics or {})})')
        curve['top1'].append([max_iters, float(metrics['accuracy/top1'])])
    out = dict(name=run['name'], kind=run.get('kind'), key=run['key'], seed=run.get('seed'),
               top1=curve['top1'][-1][1], curve=curve, scalars=osp.relpath(scalars, run['work_dir']),
               max_iters=max_iters)
    if after_train is not None:
        after_train(runner)
    out['seconds'] = round(time.perf_counter() - t0, 2)
    atomic_save_json(out, run['result_file'])
    del runner
    return out


def serial_executor(runs, rerun=False, log=None):
    """Train every run not finished yet, one after the other in this process; ``{name: result}``."""
    results = {}
    for k, run in enumerate(runs):
        out = cached_run(run, rerun)
        state = 'cached'
        if out is None:
            out, state = train_run(run), 'trained'
        results[run['name']] = dict(out, cached=state == 'cached')
        if log is not None:
            log(f'[{k + 1}/{len(runs)}] {run["name"]}: top-1 {out["top1"]:.2f}% ({state}, {out["seconds"]:.1f} s)')
        sys.stdout.flush()
    return results


def quiet_config_format():
    """The Runner formats its config with yapf (log + dump): ~1 s per call, several calls per run, more than
    a short run's training. Off in this process: the text stays valid Python, only unformatted."""
    import mmengine.config.config as mmcfg
    mmcfg.FormatCode = lambda text, *a, **k: (text, False)


def init_worker(log_dir, threads):
    """A training worker process: ``threads`` torch threads, its console into
    ``log_dir/worker_<pid>.log``, Ctrl-C left to the parent, the Runner's config formatting off."""
    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    os.makedirs(log_dir, exist_ok=True)
    f = open(osp.join(log_dir, f'worker_{os.getpid()}.log'), 'a', buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    quiet_config_format()


def _pool_run(run):
    sys.stdout.write(f'=== {run["name"]}\n')
    return train_run(run)


class WorkerPool:
    """Forked worker processes (``jobs``, started by ``initializer(*initargs)``; their consoles in
    ``log_dir``) and the collection of their results. Create it before this process computes anything
    with torch (the workers are forked). Base of :class:`RunPool` and the demo's pool."""

    def __init__(self, jobs, log_dir, initializer, initargs):
        self.log_dir = log_dir
        self.jobs = int(jobs)
        self.pool = mp.get_context('fork').Pool(self.jobs, initializer=initializer, initargs=initargs)
        self.pids = self._pids()

    def _pids(self):
        return {p.pid for p in getattr(self.pool, '_pool', [])}

    def finished(self, pending):
        """Yield ``(run, result)`` of the ``pending`` ``(run, AsyncResult)`` pairs as they finish. A run
        that raised, or a worker that died (killed, out of memory: its run would never finish), ends the
        wait with one line naming the runs and the logs."""
        from dery.errors import DeryError
        todo = list(pending)
        while todo:
            for run, res in list(todo):
                if not res.ready():
                    continue
                todo.remove((run, res))
                try:
                    out = res.get()
                except Exception as e:
                    raise DeryError(f'training run {run["name"]} failed ({type(e).__name__}: {e}); see the logs '
                                    f'under {run["work_dir"]} and {self.log_dir}/') from e
                yield run, out
            if todo and self._pids() != self.pids:  # workers live until close(): one was killed
                raise DeryError('a training worker process died (killed, or out of memory?) while running '
                                f'{", ".join(r["name"] for r, _ in todo)}; see {self.log_dir}/')
            if todo:
                time.sleep(0.2)

    def close(self):
        self.pool.close()
        self.pool.join()

    def terminate(self):
        self.pool.terminate()
        self.pool.join()


class RunPool(WorkerPool):
    """Worker processes training runs in parallel (``jobs`` processes of ``threads`` torch threads), their
    consoles in ``log_dir``. Create it before this process computes anything with torch (the workers
    are forked). Call it like :func:`serial_executor`."""

    def __init__(self, jobs, log_dir, threads=1):
        super().__init__(jobs, log_dir, init_worker, (log_dir, int(threads)))

    def __call__(self, runs, rerun=False, log=None):
        results, pending = {}, []
        for run in runs:
            out = cached_run(run, rerun)
            if out is not None:
                results[run['name']] = dict(out, cached=True)
            else:
                pending.append((run, self.pool.apply_async(_pool_run, (run, ))))
        if log is not None:
            log(f'{len(results)} of {len(runs)} runs cached; training {len(pending)} in {self.jobs} process(es), '
                f'logs in {self.log_dir}/')
        for done, (run, out) in enumerate(self.finished(pending), 1):
            results[run['name']] = dict(out, cached=False)
            if log is not None:
                log(f'  [{done}] {run["name"]}: top-1 {out["top1"]:.2f}% ({out["seconds"]:.1f} s)')
        return results
