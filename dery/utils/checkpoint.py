"""Keep torch's safe checkpoint loader on for mmengine checkpoints.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``. mmengine
0.10.7 checkpoints carry a few plain objects in their ``message_hub``: its
``HistoryBuffer`` (whose pickled state refers to its statistic methods through
``getattr(HistoryBuffer, 'mean')``), numpy scalars and arrays. So mmengine's
own ``load_checkpoint`` and ``Runner.resume`` fail on them. Rather than
switching the safe loader off (which would let any checkpoint run code), we
allow-list exactly those classes, and stand in for ``getattr`` with a version
that only hands out ``HistoryBuffer``'s statistic methods.
"""
import pickle

import numpy as np
import torch

_DONE = False


def _history_buffer_getattr(obj, name):
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') and \
            callable(getattr(HistoryBuffer, name, None)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only mmengine HistoryBuffer methods are '
        'allowed by the safe loader')


def register_safe_globals():
    """Allow-list what mmengine checkpoints need for ``torch.load(weights_only=True)``."""
    global _DONE
    if _DONE or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    safe = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy dtype classes (np.dtypes.Float64DType, ...) appear in pickled arrays
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
    safe += [(_history_buffer_getattr, '__builtin__.getattr'),
             (_history_buffer_getattr, 'builtins.getattr')]
    torch.serialization.add_safe_globals(safe)
    _DONE = True


def state_dict_of(ckpt):
    """The weights of a checkpoint dict (``state_dict`` of an mmengine checkpoint, or the dict itself)."""
    sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(sd, dict):
        return {}
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}


def check_state_dict(model, state, source, network='the network', prefix='', fix=None):
    """Raise :class:`~dery.errors.CheckpointError` unless ``state`` has exactly ``model``'s keys and shapes.

    ``prefix``: keep only the checkpoint keys under it (stripped). One line names
    the first missing, unexpected and mis-shaped keys, the network expected, and
    ``fix``.
    """
    from dery.errors import CheckpointError
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, 'shape')}
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    wrong = [f'{k} {theirs[k]} vs {own[k]}' for k in own if k in theirs and theirs[k] != own[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for what, keys in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', wrong)):
        if keys:
            parts.append(f'{len(keys)} {what} (first: {", ".join(keys[:2])})')
    raise CheckpointError(f'checkpoint {source} does not fit {network}: {"; ".join(parts)}. '
                          + (fix or 'It belongs to another network: use the config (or assembly) that made it'))
