"""Process memory: give freed heap back to the OS (glibc), keep big buffers out of the heap.

PyTorch's CPU allocator is glibc's ``malloc``. glibc serves a request above its
*mmap threshold* with its own ``mmap`` (returned to the OS on ``free``) and
smaller ones from the heap. The threshold is dynamic: each time a large
mmapped block is freed it rises to that block's size (up to 32 MiB on 64-bit),
so after the first few forward passes the activation buffers of a model are
served from the heap, which fragments and keeps growing. Measured on the
assembly stage's zoo pass (``swin_base_in1k``, 10 batches of 16 at 224, 2
threads): resident size 3.02 GB with the dynamic threshold, 1.56 GB with a fixed
1 MiB one, at the same speed. Both functions are no-ops where the C library
is not glibc.
"""
import gc
import os

__all__ = ['trim_memory', 'fix_mmap_threshold']

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h)
_M_MMAP_THRESHOLD = -3


def _libc():
    try:
        import ctypes
        return ctypes.CDLL('libc.so.6')
    except OSError:  # not glibc
        return None


def trim_memory():
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim``).

    Freed tensors below glibc's mmap threshold stay in the process's heap; after
    releasing a model that would keep the resident size at its high-water mark.
    """
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, 'malloc_trim'):
        libc.malloc_trim(0)


def fix_mmap_threshold(nbytes=1 << 20):
    """Fix glibc's mmap threshold at ``nbytes`` (its dynamic rise disabled): buffers of 1 MiB and more
    are mapped and unmapped on their own, so tensors freed after a forward pass leave the process.

    Left as it is when you set ``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable) or ``DERY_MALLOC=default``.
    Returns True when it was set.
    """
    if os.environ.get('MALLOC_MMAP_THRESHOLD_') or os.environ.get('DERY_MALLOC', '') == 'default':
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, 'mallopt'):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
