"""The one place that joins a distributed job; everything else uses ``mmengine.dist``.

Ranks, barriers, broadcasts, gathers and all-reduces are mmengine's
(``mmengine.dist.get_dist_info``, ``barrier``, ``broadcast_object_list``,
``gather``, ``all_reduce``): they are no-ops in a single process and pick the
communication device of the backend (CPU for gloo, the current GPU for nccl).

What mmengine does not cover is joining a job on a machine without GPUs:
``mmengine.dist.init_dist('pytorch')`` calls ``torch.cuda.set_device``, which
fails there. :func:`init_dist` joins with gloo on CPU and defers to mmengine
otherwise. Also here: :class:`WorkQueue` (hand out work items to the ranks,
first come first served, through the job's rendezvous store) and
:func:`setup_threads` (torch's intra-op threads from the cores each process
may use).
"""
import datetime
import itertools
import os

from dery.errors import ConfigError

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def init_dist(launcher='none', backend=None, timeout=None):
    """Join the job of ``launcher`` unless a process group exists; return ``(rank, world)``.

    ``'none'`` runs single-process (or uses a group that already exists, e.g.
    inside a Runner). ``backend``: None picks nccl with GPUs, gloo without
    (a requested nccl on a CPU machine becomes gloo). ``timeout`` in seconds.
    """
    import torch
    from mmengine.dist import get_dist_info, is_distributed
    if launcher in (None, 'none') or is_distributed():
        return get_dist_info()
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    cuda = torch.cuda.is_available()
    backend = backend if (backend and cuda) else ('nccl' if cuda else 'gloo')
    kwargs = {} if timeout is None else dict(timeout=int(timeout))
    if launcher == 'pytorch' and not cuda:
        torch.distributed.init_process_group(
            backend='gloo', **({} if timeout is None else
                               dict(timeout=datetime.timedelta(seconds=int(timeout)))))
    else:
        from mmengine.dist import init_dist as mm_init_dist
        mm_init_dist(launcher, backend=backend, **kwargs)  # mmengine makes the timedelta itself
    if cuda and 'LOCAL_RANK' in os.environ:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    return get_dist_info()


def broadcast(obj, src=0):
    """``obj`` as rank ``src`` has it, on every rank (``mmengine.dist.broadcast_object_list``)."""
    from mmengine.dist import broadcast_object_list, is_distributed
    if not is_distributed():
        return obj
    box = [obj]
    broadcast_object_list(box, src=src)
    return box[0]


class WorkQueue:
    """The items ``0 .. n-1`` handed out to the processes of a job, first come first served.

    Every rank creates the queue (a collective call, in the same order on all
    ranks) and calls :meth:`next` until it returns None; each item goes to
    exactly one rank. Distributed, the counter lives in the job's rendezvous
    store (``torch.distributed``'s default store, shared by all ranks and
    nodes), so a rank that finishes early takes the next item: big and small
    items balance themselves. Single-process, or when the store is not
    available, the items are dealt round-robin (rank ``r`` gets ``r, r + W,
    ...``). :meth:`done` / :meth:`num_done` count finished items (for
    progress bars on rank 0).
    """

    _serial = itertools.count()

    def __init__(self, n, name='queue'):
        from mmengine.dist import get_dist_info
        self.n = int(n)
        self.rank, self.world = get_dist_info()
        self._store, self._static, self._done_local = None, None, 0
        serial = next(WorkQueue._serial)
        if self.world > 1:
            try:
                import torch.distributed.distributed_c10d as c10d
                self._store = c10d._get_default_store()
            except Exception:  # noqa: BLE001 - an unusual backend: deal round-robin
                self._store = None
            token = broadcast(os.urandom(8).hex() if self.rank == 0 else None)
            self._prefix = f'dery/{name}/{serial}/{token}'
        if self._store is None:
            self._static = iter(range(self.rank, self.n, self.world))

    def next(self):
        """The next item for this rank, or None when all are handed out."""
        if self._store is None:
            return next(self._static, None)
        i = int(self._store.add(self._prefix + '/next', 1)) - 1
        return i if i < self.n else None

    def done(self, k=1):
        """Count ``k`` finished items."""
        self._done_local += k
        if self._store is not None:
            self._store.add(self._prefix + '/done', k)

    def num_done(self):
        """Finished items over all ranks (this rank's alone when dealt round-robin)."""
        if self._store is None:
            return self._done_local
        return int(self._store.add(self._prefix + '/done', 0))


def available_cores():
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    for path in ('/sys/fs/cgroup/cpu.max', ):  # cgroup v2: "<quota> <period>" or "max <period>"
        try:
            with open(path) as f:
                quota, period = f.read().split()[:2]
            if quota != 'max':
                cores = min(cores, max(1, int(int(quota) // int(period))))
        except (OSError, ValueError):
            pass
    try:  # cgroup v1
        with open('/sys/fs/cgroup/cpu/cpu.cfs_quota_us') as f:
            quota = int(f.read())
        with open('/sys/fs/cgroup/cpu/cpu.cfs_period_us') as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            cores = min(cores, max(1, quota // period))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _torchrun_default_omp():
    """True when ``OMP_NUM_THREADS`` is the ``1`` torchrun sets for its workers by default.

    torchrun sets it only when its own environment had none; its initial
    environment (``/proc/<torchrun pid>/environ``) tells which.
    """
    if os.environ.get('OMP_NUM_THREADS') != '1' or 'TORCHELASTIC_RUN_ID' not in os.environ:
        return False
    try:
        with open(f'/proc/{os.getppid()}/environ', 'rb') as f:
            env = f.read().split(b'\0')
    except OSError:
        return False
    return not any(e.startswith(b'OMP_NUM_THREADS=') for e in env)


def threads_per_process():
    """``(threads, why)``: torch intra-op threads for this process.

    ``DERY_NUM_THREADS``, else ``OMP_NUM_THREADS`` when set by the user (not
    torchrun's default 1), else the available cores divided by the processes
    of this job on this machine (``LOCAL_WORLD_SIZE`` under torchrun).
    """
    for var in ('DERY_NUM_THREADS', 'OMP_NUM_THREADS'):
        value = os.environ.get(var)
        if value and not (var == 'OMP_NUM_THREADS' and _torchrun_default_omp()):
            try:
                return max(1, int(value)), var
            except ValueError:
                raise ConfigError(f'{var} must be a positive integer, got {value!r}') from None
    local = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1))
    cores = available_cores()
    return max(1, cores // local), f'{cores} core(s) / {local} process(es)'


def setup_threads():
    """Set torch's intra-op threads with :func:`threads_per_process`; returns the number.

    Under ``torchrun`` on CPU every process would otherwise start one thread
    per core of the machine (oversubscription: N processes x all cores) or,
    with torchrun's default ``OMP_NUM_THREADS=1``, leave cores idle.
    """
    import torch
    n, _ = threads_per_process()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


__all__ = ['init_dist', 'broadcast', 'LAUNCHERS', 'WorkQueue', 'available_cores', 'threads_per_process',
           'setup_threads']
