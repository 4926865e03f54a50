"""Atomic file writes and checked loads.

Every long stage writes its outputs through :func:`atomic_write`: the data
goes to a temporary file in the same folder which is renamed over the target
only when complete, so an interrupted run never leaves a half-written file that
a later run would read as finished.
"""
import contextlib
import hashlib
import json
import os
import os.path as osp
import re
import tempfile
import zipfile

import torch

from dery.errors import CheckpointError, ConfigError, MissingFileError
from .memory import peak_rss


def _default_mode():
    """``0o666`` less the process umask: the permissions ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temp file next to ``path``; rename it over ``path`` on success.

    The file gets the usual permissions (``0o666`` less the umask, as mmengine's
    outputs), not ``mkstemp``'s private ``0o600``.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp', dir=folder)
    os.chmod(tmp, _default_mode())
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_save_json(obj, path, **kwargs):
    kwargs.setdefault('indent', 2)
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, **kwargs)
        f.write('\n')


def load_json(path, what='file'):
    """Load JSON, turning a parse error into one line naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f'{what} {path} is not valid JSON ({e}); delete it to recompute it.') from None


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def safe_torch_load(path, map_location='cpu', allow_pickle=False, mmap=False):
    """``torch.load`` with the safe (weights-only) loader and clear errors.

    A file that needs arbitrary pickle execution is refused unless the user
    opts in with ``allow_pickle=True`` (zoo entry field ``allow_pickle: true``).
    """
    from .checkpoint import register_safe_globals
    register_safe_globals()
    path = os.fspath(path)
    if not osp.isfile(path):
        raise MissingFileError(f'checkpoint file not found: {path}')
    try:
        if mmap and zipfile.is_zipfile(path):  # tensors stay on disk until used (reading metadata is cheap)
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - re-raised with the cause named
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = re.sub(r'\x1b\[[0-9;]*m', '', msg)  # torch's message carries terminal bold codes
        needs_code = ('Unsupported global' in str(e) or 'unrecognized function' in str(e)) \
            and zipfile.is_zipfile(path)
        if needs_code:
            raise CheckpointError(
                f'checkpoint {path} needs pickle code execution to load ({msg}); '
                'if you trust the file, set `allow_pickle: true` on its zoo entry.') from None
        raise CheckpointError(
            f'checkpoint {path} is truncated or corrupt ({type(e).__name__}: {msg}); '
            'download it again.') from None


def record_timings(work_dir, stage, **values):
    """Merge wall-clock figures of ``stage`` into ``WORK_DIR/timings.json``.

    Timings live beside, not inside, ``partition.json`` and ``assembly.json``
    so that those stay byte-identical for the same config and seed. Each
    stage's record also gets ``peak_rss_gib``: the writing process's peak
    resident size so far (the stages of one tool run in one process, so a
    later stage's figure is the larger of its own peak and the earlier ones').
    """
    data = load_timings(work_dir)
    data[stage] = dict(values, peak_rss_gib=round(peak_rss() / (1 << 30), 3))
    atomic_save_json(data, osp.join(work_dir, 'timings.json'), sort_keys=True)


def load_timings(work_dir):
    """``{stage: {figure: value}}`` of ``WORK_DIR/timings.json`` (empty when absent or unreadable:
    timings are informative, never an input of a stage)."""
    path = osp.join(work_dir, 'timings.json')
    if not osp.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
