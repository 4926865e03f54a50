"""Deploying an assembled network outside Python + DeRy: ONNX, TorchScript, published checkpoints.

The exported graph is the whole classifier: ``image -> logits``, where
``image`` is a float ``[B, 3, H, W]`` tensor of pixel values as the config's
data preprocessor receives them (0..255, the channel order of the loaded
images), and ``logits`` the class logits (``softmax=True``: ``scores``, the
softmax class scores, as mmpretrain's ``pred_score``).
The data preprocessor (channel flip, mean / std) is part of the graph, so a
runtime needs nothing from the config. ``H, W`` are fixed (the assembly's
input size unless given); the batch is fixed too unless ``dynamic_batch``.

Every export is checked: :func:`parity` runs PyTorch and the exported graph on
the same random inputs and reports the largest absolute difference of the
outputs (a :class:`~dery.errors.DeryError` above the tolerance, 1e-4).

``publish_model`` follows mmpretrain's ``publish_model.py`` (weights only, the
date and the first 8 hex digits of the file's sha256 in the name) and embeds
the assembly record and a standalone config, so the file alone rebuilds the
network: ``dery.apis.init_model(checkpoint=PUBLISHED)``.
"""
import copy
import datetime
import hashlib
import os
import os.path as osp
import warnings

import torch
import torch.nn as nn

from dery.errors import DeryError, MissingFileError

__all__ = ['ExportWrapper', 'export', 'export_onnx', 'export_torchscript', 'onnx_runner', 'torchscript_runner',
           'parity', 'publish_model', 'input_shape_of', 'export_report', 'PARITY_TOLERANCE']

#: the largest absolute difference of the outputs an export may show against PyTorch
PARITY_TOLERANCE = 1e-4


class ExportWrapper(nn.Module):
    """``image [B, 3, H, W] (pixels) -> logits [B, num_classes]``: data preprocessor, network (softmax)."""

    def __init__(self, model, softmax=False):
        super().__init__()
        self.model = model
        self.softmax = softmax
        self.eval()

    def forward(self, image):
        x = self.model.data_preprocessor(dict(inputs=image), False)['inputs']
        logits = self.model(x, mode='tensor')
        if isinstance(logits, (tuple, list)):
            logits = logits[-1]
        return logits.softmax(-1) if self.softmax else logits


def input_shape_of(model, shape=None):
    """``(3, H, W)``: ``shape`` (an int or ``(H, W)``), else the assembly's input size, else 224."""
    if shape is not None:
        shape = [shape] if isinstance(shape, int) else list(shape)
        if len(shape) == 1:
            shape = shape * 2
        if len(shape) != 2:
            raise DeryError(f'--shape takes one or two sizes (H W), got {shape}')
        return (3, int(shape[0]), int(shape[1]))
    size = getattr(getattr(model, 'backbone', None), 'input_size', None)
    return tuple(int(s) for s in size) if size else (3, 224, 224)


def _inputs(input_shape, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch_size, ) + tuple(input_shape), generator=g) * 255.0


def _check_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise DeryError(f'ONNX export needs the optional packages onnx and onnxruntime ({e}); install them with '
                        '`.venv/bin/python -m pip install -r requirements/optional.txt`') from None


def export_onnx(model, path, input_shape=(3, 224, 224), batch_size=1, dynamic_batch=False, opset=17,
                softmax=False):
    """Export ``model`` (a classifier) to ONNX at ``path``; returns the path.

    mmengine-built networks go through torch's TorchScript-based exporter
    (``dynamo=False``: ``torch.export`` cannot follow the zoo stems' early exit).
    """
    _check_onnx()
    import onnx
    wrapper = ExportWrapper(model, softmax)
    x = _inputs(input_shape, batch_size, 0)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    # the tracer's warnings (Python control flow on shapes, deprecations) are expected
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        out = 'scores' if softmax else 'logits'
        torch.onnx.export(wrapper, (x, ), path, dynamo=False, opset_version=opset, input_names=['image'],
                          output_names=[out], dynamic_axes={'image': {0: 'batch'}, out: {0: 'batch'}}
                          if dynamic_batch else None)
    onnx.checker.check_model(onnx.load(path))
    return path


def export_torchscript(model, path, input_shape=(3, 224, 224), batch_size=1, softmax=False):
    """Trace ``model`` (a classifier) to TorchScript at ``path``; returns the path."""
    wrapper = ExportWrapper(model, softmax)
    x = _inputs(input_shape, batch_size, 0)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(wrapper, x, check_trace=False)
    traced.save(path)
    return path


def onnx_runner(path):
    """``f(numpy image batch) -> numpy scores`` through onnxruntime (CPU)."""
    _check_onnx()
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def torchscript_runner(path):
    """``f(numpy image batch) -> numpy scores`` through ``torch.jit.load``."""
    module = torch.jit.load(path, map_location='cpu').eval()

    def run(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def parity(model, runner, input_shape, batch_sizes=(1, ), samples=2, seed=1, softmax=False,
           tolerance=PARITY_TOLERANCE):
    """``(max |exported - PyTorch|, max |PyTorch|)`` of the outputs on random images; a DeryError when
    the first is above ``tolerance``.

    ``samples`` random batches of each size in ``batch_sizes`` (pixels uniform
    in 0..255), other than the one the graph was traced on.
    """
    import numpy as np
    wrapper = ExportWrapper(model, softmax)
    worst, scale = 0.0, 0.0
    for b in batch_sizes:
        for k in range(samples):
            x = _inputs(input_shape, b, seed + k)
            with torch.no_grad():
                ref = wrapper(x).numpy()
            try:
                out = np.asarray(runner(x.numpy()))
            except Exception as e:  # noqa: BLE001 - a runtime refusing the input is a parity failure
                raise DeryError(f'the exported graph does not run on a batch of {b} ({type(e).__name__}: '
                                f'{str(e).splitlines()[0][:200]})') from None
            if out.shape != ref.shape:
                raise DeryError(f'the exported graph gives scores of shape {out.shape}, PyTorch {ref.shape}')
            worst = max(worst, float(np.abs(out - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    if not worst <= tolerance:
        raise DeryError(f'parity check failed: max |exported - PyTorch| = {worst:.3g} > {tolerance:g} (outputs '
                        f'up to {scale:.3g}, batches of {", ".join(map(str, batch_sizes))})')
    return worst, scale


# ---------------------------------------------------------------------------------------------- publish
#: what a published checkpoint's embedded config keeps (what building and inference need)
PUBLISH_KEYS = ('default_scope', 'custom_imports', 'model', 'data_preprocessor', 'test_dataloader',
                'test_evaluator', 'test_cfg')


def publish_model(in_file, out_file, no_ema=False, config=None):
    """Write a checkpoint to publish, in mmpretrain's convention; returns the final path.

    Optimizer, scheduler and message-hub states are dropped; the EMA weights
    are kept (mmengine's ``EMAHook`` saves them as ``state_dict``) unless
    ``no_ema``. ``meta`` gains ``dery_assembly`` (the assembly record) and
    ``dery_config`` (a standalone config of the network, from ``config`` or
    the training config the checkpoint carries). The file is written as
    ``<out_file stem>_<YYYYMMDD>-<sha256[:8]>.pth``.
    """
    from mmengine.config import Config

    from dery.assembly import assembly_of_checkpoint, use_assembly
    from dery.utils import atomic_write, safe_torch_load, to_plain
    from .inference import config_of_checkpoint, init_model
    if not osp.isfile(in_file):
        raise MissingFileError(f'checkpoint not found: {in_file}')
    out_dir = osp.dirname(osp.abspath(out_file))
    if not osp.isdir(out_dir):
        raise MissingFileError(f'output folder does not exist: {out_dir}')
    ckpt = safe_torch_load(in_file)
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        ckpt = dict(state_dict=ckpt)
    for key in ('optimizer', 'param_schedulers', 'hook_msgs', 'message_hub'):
        ckpt.pop(key, None)
    state = dict(ckpt['state_dict'])
    ema = ckpt.pop('ema_state_dict', None)
    if ema and no_ema:  # EMAHook swapped them: ema_state_dict holds the plain weights ('module.' + key)
        for k, v in ema.items():
            if k.startswith('module.') and k[len('module.'):] in state:
                state[k[len('module.'):]] = v
    ckpt['state_dict'] = state
    meta = dict(ckpt.get('meta') or {})
    import mmpretrain

    import dery
    meta.setdefault('mmpretrain_version', mmpretrain.__version__)
    meta['dery_version'] = dery.__version__
    meta.setdefault('dataset_meta', {})

    if config is not None:
        from .inference import _config
        cfg = _config(config, in_file)
    else:
        cfg = config_of_checkpoint(in_file)
    record = assembly_of_checkpoint(in_file)
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone':
        if record is None:
            raise DeryError(f'{in_file} carries no assembly record and has no assembly.json beside it: it cannot '
                            'be published as a DeRy network')
        use_assembly(cfg, record)  # the architecture, no initial-weights file
        meta['dery_assembly'] = record.to_json()
    out = dict(custom_imports=dict(imports=['dery.all_modules'], allow_failed_imports=False))
    for key in PUBLISH_KEYS:
        if cfg.get(key) is not None:
            out[key] = to_plain(cfg.get(key))
    out.setdefault('default_scope', 'dery')
    out['model'].get('backbone', {}).pop('init_cfg', None)
    meta['dery_config'] = Config(copy.deepcopy(out)).pretty_text
    ckpt['meta'] = meta

    base = out_file[:-4] if out_file.endswith('.pth') else out_file
    tmp = osp.join(out_dir, 'temp_' + osp.basename(base) + '.pth')
    with atomic_write(tmp, 'wb') as f:
        torch.save(ckpt, f)
    sha = hashlib.sha256()
    with open(tmp, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha.update(chunk)
    final = f'{base}_{datetime.datetime.now():%Y%m%d}-{sha.hexdigest()[:8]}.pth'
    os.replace(tmp, final)
    init_model(checkpoint=final)  # the file alone rebuilds the network and its weights fit
    return final


# ---------------------------------------------------------------------------------------------- both tools
FORMATS = dict(onnx=('.onnx', 'ONNX'), torchscript=('.pt', 'TorchScript'))


def export(config, checkpoint, fmt='onnx', output_file=None, shape=None, batch_size=1, dynamic_batch=False,
           opset=17, softmax=False, samples=2, tolerance=PARITY_TOLERANCE):
    """Build ``config`` + ``checkpoint`` (:func:`dery.apis.init_model`), export it, check parity.

    Returns ``dict(path, format, input_shape, batch_sizes, max_diff, max_output)``;
    the parity check covers ``batch_size`` and, with ``dynamic_batch`` (ONNX
    only: a traced TorchScript graph keeps its batch), two other sizes.
    """
    from .inference import init_model
    if fmt not in FORMATS:
        raise DeryError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == 'onnx':
        _check_onnx()  # before any work
    if batch_size < 1:
        raise DeryError(f'--batch-size must be at least 1, got {batch_size}')
    model = init_model(config, checkpoint)
    input_shape = input_shape_of(model, shape)
    ext, _ = FORMATS[fmt]
    path = output_file or osp.splitext(checkpoint)[0] + ext
    if fmt == 'onnx':
        export_onnx(model, path, input_shape, batch_size, dynamic_batch, opset, softmax)
        runner = onnx_runner(path)
        batches = (batch_size, 1, batch_size + 2) if dynamic_batch else (batch_size, )
    else:
        export_torchscript(model, path, input_shape, batch_size, softmax)
        runner = torchscript_runner(path)
        batches = (batch_size, )
    batches = tuple(dict.fromkeys(batches))
    try:
        diff, scale = parity(model, runner, input_shape, batches, samples, softmax=softmax, tolerance=tolerance)
    except DeryError as e:
        os.remove(path)  # a graph that computes something else is not left behind
        hint = ('; the graph keeps a batch size traced into it (e.g. Swin window partitions): export without '
                '--dynamic-export' if dynamic_batch and len(batches) > 1 else '')
        raise DeryError(f'{FORMATS[fmt][1]} export {path}: {e}{hint}') from None
    return dict(path=path, format=fmt, input_shape=input_shape, batch_sizes=batches, max_diff=diff,
                max_output=scale, samples=samples, tolerance=tolerance, output='scores' if softmax else 'logits')


def export_report(res):
    """Two lines: the file, and the parity figures."""
    name = FORMATS[res['format']][1]
    c, h, w = res['input_shape']
    return (f"{name}: {res['path']} (image [B, {c}, {h}, {w}] pixels -> {res['output']})\n"
            f"parity: max |{name} - PyTorch| = {res['max_diff']:.3g} (outputs up to {res['max_output']:.3g}) on "
            f"{res['samples']} random batches of {', '.join(map(str, res['batch_sizes']))}; tolerance "
            f"{res['tolerance']:g}: OK")
