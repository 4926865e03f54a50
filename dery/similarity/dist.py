"""Minimal ``torch.distributed`` helpers for the similarity stage.

All are no-ops in a single process. CPU tensors are used with gloo; with
nccl the tensors travel on the current CUDA device.
"""
import os

import torch
import torch.distributed as tdist


def is_dist():
    return tdist.is_available() and tdist.is_initialized()


def rank_world():
    return (tdist.get_rank(), tdist.get_world_size()) if is_dist() else (0, 1)


def init_dist(launcher='none'):
    """Initialise the process group for ``launcher``; returns ``(rank, world)``.

    ``'none'`` uses an already initialised group if there is one (e.g. inside a
    Runner) and otherwise runs single-process. ``'pytorch'`` (torchrun) uses
    gloo on CPU-only machines and nccl with GPUs; ``'slurm'``/``'mpi'`` go
    through mmengine.
    """
    if launcher in (None, 'none') or is_dist():
        return rank_world()
    if launcher not in ('pytorch', 'slurm', 'mpi'):
        raise ValueError(f"launcher must be 'none', 'pytorch', 'slurm' or 'mpi', got {launcher!r}")
    cuda = torch.cuda.is_available()
    if launcher == 'pytorch' and not cuda:
        tdist.init_process_group('gloo')
    else:
        from mmengine.dist import init_dist as mm_init_dist
        mm_init_dist(launcher, backend='nccl' if cuda else 'gloo')
    if cuda and 'LOCAL_RANK' in os.environ:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    return rank_world()


def _comm_device():
    return torch.device('cuda', torch.cuda.current_device()) \
        if tdist.get_backend() == 'nccl' else torch.device('cpu')


def all_reduce_sum_(tensors):
    """Sum each tensor over all processes, in place."""
    if not is_dist():
        return tensors
    dev = _comm_device()
    for t in tensors:
        buf = t.to(dev)
        tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
        t.copy_(buf)
    return tensors


def gather_to_rank0(tensor):
    """List of every rank's (same-shaped) tensor on rank 0, None elsewhere."""
    if not is_dist():
        return [tensor]
    dev = _comm_device()
    rank, world = rank_world()
    buf = tensor.to(dev)
    out = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
    tdist.gather(buf, out, dst=0)
    return None if out is None else [o.cpu() for o in out]


def broadcast_object(obj):
    """``obj`` from rank 0 on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if is_dist():
        tdist.barrier()


__all__ = ['init_dist', 'rank_world', 'is_dist', 'all_reduce_sum_', 'gather_to_rank0',
           'broadcast_object', 'barrier']
