"""Params and FLOPs of a built network, measured with ``mmengine.analysis``.

A source-model stem stops its model's forward early with an exception, which
jit tracing cannot follow. While counting, each such stem returns a
placeholder of its real output shape, and its own FLOPs (measured by
``mmengine.analysis`` on a trace of its whole source model) are added.
"""
import torch

from dery.zoo.analysis import count_flops, count_params
from dery.zoo.dissect import Stem


def model_complexity(model, input_shape=(3, 224, 224)):
    """``(params, flops)`` of ``model`` on one image of ``input_shape``."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device('cpu')
    x = torch.randn((1, ) + tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    stems = [m for m in model.modules() if isinstance(m, Stem)]
    shapes, handles = {}, []
    for s in stems:
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
    extra = 0
    for s in stems:
        s.stub_shape = shapes.get(id(s))
        extra += int(getattr(s, 'flops', 0) or 0)
    try:
        flops = count_flops(model, x) + extra
    finally:
        for s in stems:
            s.stub_shape = None
    return count_params(model), int(flops)
