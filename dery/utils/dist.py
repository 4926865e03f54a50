"""The one place that joins a distributed job; everything else uses ``mmengine.dist``.

Ranks, barriers, broadcasts, gathers and all-reduces are mmengine's
(``mmengine.dist.get_dist_info``, ``barrier``, ``broadcast_object_list``,
``gather``, ``all_reduce``): they are no-ops in a single process and pick the
communication device of the backend (CPU for gloo, the current GPU for nccl).

What mmengine does not cover is joining a job on a machine without GPUs:
``mmengine.dist.init_dist('pytorch')`` calls ``torch.cuda.set_device``, which
fails there. :func:`init_dist` joins with gloo on CPU and defers to mmengine
otherwise.
"""
import datetime
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


__all__ = ['init_dist', 'broadcast', 'LAUNCHERS']
