"""Parameter and FLOP counting on top of ``mmengine.analysis``.

FLOPs follow mmengine's (fvcore's) convention: one fused multiply-add counts
as one FLOP. mmengine has no handle for ``aten::scaled_dot_product_attention``
(what timm and mmpretrain attention call in torch 2), so we add one; without it
every ViT and Swin would look almost free.
"""
import logging
from collections import Counter

import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape


def _sdpa_flop(inputs, outputs):
    q, k, v = (get_shape(i) for i in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    lq, d = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    # Q @ K^T and attention @ V
    return batch * lq * lk * d + batch * lq * lk * dv


def count_params(modules):
    """Number of distinct parameters held by ``modules`` (shared ones counted once)."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    seen = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return int(sum(seen.values()))


#: the ops of attention's ``Q K^T`` and ``A V`` products (what the original DeRy code's counter,
#: mmcv's module hooks, never saw)
ATTENTION_OPS = ('aten::matmul', 'aten::bmm', 'aten::baddbmm', 'aten::einsum', 'aten::scaled_dot_product_attention')


def count_flops(model, inputs, by_module=False, ignore_ops=()):
    """FLOPs of ``model(inputs)`` with mmengine's ``FlopAnalyzer``.

    Returns the total, or a ``Counter`` module name -> FLOPs when ``by_module``.
    ``ignore_ops``: jit op names not counted (e.g. :data:`ATTENTION_OPS`).
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs, )
    was_training = model.training
    model.eval()
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', _sdpa_flop)
    for op in ignore_ops:
        analyzer._op_handles.pop(op, None)  # mmengine's set_op_handle(op, None) keeps a default handle
        analyzer._ignored_ops.add(op)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    # mmengine logs every skipped op at WARNING through its own logger
    logger = logging.getLogger('mmengine')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        result = Counter(analyzer.by_module()) if by_module else int(analyzer.total())
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return result
