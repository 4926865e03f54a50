"""Process memory: give freed heap memory back to the OS (glibc).

PyTorch's CPU allocator is glibc's ``malloc``. glibc serves a request above its
*mmap threshold* with its own ``mmap`` (returned to the OS on ``free``) and
smaller ones from the heap. The threshold is dynamic: each time a large
mapped block is freed it rises to that block's size (up to 32 MiB on 64-bit),
so after the first forward passes a model's activation buffers come from the
heap, which keeps the freed ones. Measured on the assembly stage's zoo pass
(``swin_base_in1k``, 10 batches of 16 at 224, 2 threads, ``/tmp`` probe of
this session): peak resident size 3.16 GB as glibc leaves it (37.2 s);
:func:`trim_heap` after every batch 2.15 GB (39.9 s); a fixed 1 MiB mmap
threshold 1.86 GB but 56.9 s (every large buffer mapped and zeroed afresh),
so DeRy trims instead of fixing the threshold. No-ops where the C library is
not glibc.
"""
import gc

__all__ = ['trim_memory', 'trim_heap', 'peak_rss']


def _libc():
    try:
        import ctypes
        return ctypes.CDLL('libc.so.6')
    except OSError:  # not glibc
        return None


_LIBC = _libc()


def trim_heap():
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim(0)``; no garbage collection):
    cheap enough to call after every forward pass of a large model."""
    if _LIBC is not None and hasattr(_LIBC, 'malloc_trim'):
        _LIBC.malloc_trim(0)


def trim_memory():
    """Collect garbage and hand freed heap memory back to the OS.

    Freed tensors below glibc's mmap threshold stay in the process's heap; after
    releasing a model that would keep the resident size at its high-water mark.
    """
    gc.collect()
    trim_heap()


def peak_rss():
    """This process's peak resident size so far, in bytes (Linux ``VmHWM``; elsewhere ``ru_maxrss``)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == 'darwin' else peak * 1024)  # bytes on macOS, KiB elsewhere
