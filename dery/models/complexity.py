"""Params and FLOPs of a built network, measured with ``mmengine.analysis``.

A source-model stem stops its model's forward early with an exception, which
jit tracing cannot follow. While counting, each such stem returns a
placeholder of its real output shape, and its own FLOPs (measured by
``mmengine.analysis`` on a trace of its whole source model) are added.

Two conventions: ours (:func:`model_complexity`) counts the whole classifier,
attention's matrix products included; the DeRy paper's (mmcv's counter on
``backbone + neck``) saw neither the head nor the attention products
(:func:`complexity_by_part` with ``ignore_ops=ATTENTION_OPS`` gives the parts).
"""
import torch

from dery.zoo.analysis import ATTENTION_OPS, count_flops, count_params
from dery.zoo.dissect import Stem

__all__ = ['model_complexity', 'complexity_by_part', 'ATTENTION_OPS']


def _traced(model, input_shape, by_module=False, ignore_ops=()):
    """FLOPs of ``model`` on one image (or a Counter per module), and the source stems' own FLOPs."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device('cpu')
    x = torch.randn((1, ) + tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    stems = [(n, m) for n, m in model.named_modules() if isinstance(m, Stem)]
    shapes, handles = {}, []
    for _, s in stems:
        handles.append(s.register_forward_hook(
            lambda mod, args, out: shapes.__setitem__(id(mod), tuple(out.shape[1:]))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    extra = {}
    for name, s in stems:
        s.stub_shape = shapes.get(id(s))
        extra[name] = int(getattr(s, 'flops', 0) or 0)
    try:
        flops = count_flops(model, x, by_module=by_module, ignore_ops=ignore_ops)
    finally:
        for _, s in stems:
            s.stub_shape = None
    return flops, extra


def model_complexity(model, input_shape=(3, 224, 224)):
    """``(params, flops)`` of ``model`` on one image of ``input_shape``."""
    flops, extra = _traced(model, input_shape)
    return count_params(model), int(flops + sum(extra.values()))


def complexity_by_part(model, input_shape=(3, 224, 224), ignore_ops=()):
    """``{part: (params, flops)}`` of a classifier (or a bare backbone) on a ``ReassembledBackbone``.

    Parts: ``stem``, ``blocks``, ``stitches`` (the stem's stitch included),
    ``neck``, ``head`` (the backbone's output norms and the classifier head)
    and ``total`` (= ``model_complexity`` when ``ignore_ops`` is empty).
    ``ignore_ops``: jit ops not counted, e.g. :data:`ATTENTION_OPS`.
    """
    from .backbone import ReassembledBackbone
    by_module, extra = _traced(model, input_shape, by_module=True, ignore_ops=ignore_ops)
    prefix = next((n for n, m in model.named_modules() if isinstance(m, ReassembledBackbone)), None)
    if prefix is None:
        raise TypeError(f'{type(model).__name__} holds no ReassembledBackbone')
    pre = f'{prefix}.' if prefix else ''
    groups = dict(stem=[f'{pre}stem'], blocks=[f'{pre}blocks'], stitches=[f'{pre}stitches', f'{pre}stem_stitch'],
                  neck=['neck'], head=[f'{pre}out_norms', 'head'])

    def owner(name):
        for part, roots in groups.items():
            if any(name == r or name.startswith(r + '.') for r in roots):
                return part
        return None

    parts = {}
    for part, roots in groups.items():
        mods = [model.get_submodule(r) for r in roots if _has(model, r)]
        flops = by_module.get(roots[0], 0) if len(roots) == 1 else sum(by_module.get(r, 0) for r in roots)
        parts[part] = [count_params(mods) if mods else 0, int(flops)]
    parts['stem'][1] += sum(v for n, v in extra.items() if owner(n) == 'stem')
    parts['blocks'][1] += sum(v for n, v in extra.items() if owner(n) == 'blocks')
    total = int(by_module.get('', 0) + sum(extra.values()))
    counted = sum(v[1] for v in parts.values())
    if counted != total:  # ops outside the named parts (none in DeRy's classifiers): keep the total honest
        parts['other'] = [0, total - counted]
    parts['total'] = [count_params(model), total]
    return {k: tuple(v) for k, v in parts.items()}


def _has(model, name):
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False
