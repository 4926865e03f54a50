"""Find a model's nodes from its structure, and cut it into exact sub-networks.

A *node* is an atomic residual block (ResNet ``layer3.4``, ViT ``blocks.7``,
Swin ``layers.2.blocks.3``...). Nodes are derived from the module tree, never
typed per model:

* a **chain** is a module whose children run one after another and hold at
  least one *block-like* child: an ``nn.Sequential``/``nn.ModuleList``, or any
  module whose children all share one class (timm's ``RegStage``). A module is
  block-like when at least three of its sub-modules own parameters (a conv +
  norm pair, a patch merging or a downsample is not; a residual or transformer
  block is);
* walking down from the root, a child that itself contains a chain is entered
  (stages, ``blocks`` containers); a block-like child of a chain is a node, and
  so is a child that closes a chain of stages with the stages' own class (a
  one-block stage such as timm MobileNetV3's ``blocks.6``, its 1x1 conv to 960
  channels); anything else is *glue*;
* glue that runs before the first node is part of the stem, glue after the last
  node is part of the head, and glue between nodes (Swin's patch merging,
  ConvNeXt's downsample) is attached to the node that follows it, so that every
  node maps the previous node's output to its own.

Tensors between nodes use one layout per family: ``cnn`` ``[B, C, H, W]``,
``vit`` ``[B, N, C]`` (prefix tokens first) and ``swin`` ``[B, H, W, C]``.
Modules whose forward wants side information (mmpretrain's Swin blocks take
``(tokens, hw_shape)``) get a :class:`CallConvention` that converts to and
from that layout, so cuts stay exact and shape-agnostic.

Why not ``torch.fx``: mmpretrain's Swin and ViT cannot be traced by fx
(control flow in adaptive padding), and timm's ``feature_info`` stops at stage
granularity; forward hooks on the real modules work for every library.
"""
import copy
from collections import OrderedDict

import torch
import torch.nn as nn

from dery.errors import DeryError

_CONTAINERS = (nn.Sequential, nn.ModuleList)
_MIN_PARAM_MODULES = 3


class DissectionError(DeryError, ValueError):
    """A model's structure does not fit the node / cut rules."""


# --------------------------------------------------------------------------
# call conventions
# --------------------------------------------------------------------------
class CallConvention:
    """How to call a unit on a canonical tensor and read its hooks.

    The default: the unit takes the tensor as its first argument and returns a
    tensor in the same layout.
    """

    def canonical_input(self, module, args):
        return args[0]

    def canonical_output(self, module, args, output):
        if not torch.is_tensor(output):
            raise DissectionError(
                f'{type(module).__name__} returns {type(output).__name__}, not a tensor; '
                'register a CallConvention for it (dery.zoo.register_call_convention).')
        return output

    def __call__(self, module, x):
        return module(x)


class TokensHWConvention(CallConvention):
    """``forward(tokens [B, L, C], (H, W)) -> tokens`` (mmpretrain Swin blocks)."""

    def canonical_input(self, module, args):
        x, (h, w) = args[0], args[1]
        return x.view(x.shape[0], h, w, x.shape[-1])

    def canonical_output(self, module, args, output):
        h, w = args[1]
        return output.view(output.shape[0], h, w, output.shape[-1])

    def __call__(self, module, x):
        b, h, w, c = x.shape
        y = module(x.reshape(b, h * w, c), (h, w))
        return y.view(b, h, w, y.shape[-1])


class TokensHWDownsampleConvention(TokensHWConvention):
    """``forward(tokens, (H, W)) -> (tokens, (H', W'))`` (mmpretrain PatchMerging)."""

    def canonical_output(self, module, args, output):
        y, (h, w) = output
        return y.view(y.shape[0], h, w, y.shape[-1])

    def __call__(self, module, x):
        b, h, w, c = x.shape
        y, (h2, w2) = module(x.reshape(b, h * w, c), (h, w))
        return y.view(b, h2, w2, y.shape[-1])


_CONVENTIONS = {}
_DEFAULT_CONVENTION = CallConvention()
_BUILTINS_LOADED = False


def register_call_convention(module_cls, convention):
    """Tell DeRy how to call ``module_cls`` on a canonical tensor."""
    _CONVENTIONS[module_cls] = convention


def _load_builtin_conventions():
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    try:
        from mmpretrain.models.backbones.swin_transformer import SwinBlock
        from mmpretrain.models.utils import PatchMerging
    except ImportError:  # pragma: no cover - mmpretrain is a runtime dependency
        return
    _CONVENTIONS.setdefault(SwinBlock, TokensHWConvention())
    _CONVENTIONS.setdefault(PatchMerging, TokensHWDownsampleConvention())
    try:  # mmpretrain's Swin builds mmcv's PatchMerging, not its own
        from mmcv.cnn.bricks.transformer import PatchMerging as MMCVPatchMerging
        _CONVENTIONS.setdefault(MMCVPatchMerging, TokensHWDownsampleConvention())
    except ImportError:  # pragma: no cover
        pass
    try:
        from mmpretrain.models.backbones.swin_transformer_v2 import SwinBlockV2
        _CONVENTIONS.setdefault(SwinBlockV2, TokensHWConvention())
    except ImportError:  # pragma: no cover
        pass


def convention_of(module):
    _load_builtin_conventions()
    for cls in type(module).__mro__:
        if cls in _CONVENTIONS:
            return _CONVENTIONS[cls]
    return _DEFAULT_CONVENTION


# --------------------------------------------------------------------------
# structure walk
# --------------------------------------------------------------------------
def _num_param_modules(module):
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None)


def _is_blocklike(module):
    return _num_param_modules(module) >= _MIN_PARAM_MODULES


def _is_chain(module):
    """Children that run one after another and hold blocks.

    Either a container (``nn.Sequential``/``nn.ModuleList``) with a block-like
    child, or a module with two or more block-like children of one class
    (mmpretrain's MobileNetV3 keeps ``layer1..layer15`` on the backbone itself,
    timm's ``RegStage`` keeps ``b1..bN``), or a module whose only child is a
    block-like non-container (a depth-1 ``RegStage``; a single ``Sequential``
    child is a wrapper, as in torchvision's ``InvertedResidual.block``).
    """
    children = list(module.children())
    blocklike = [c for c in children if _is_blocklike(c)]
    if not blocklike:
        return False
    if isinstance(module, _CONTAINERS):
        return True
    if len(children) == 1:
        return not isinstance(children[0], _CONTAINERS)
    counts = {}
    for c in blocklike:
        counts[type(c)] = counts.get(type(c), 0) + 1
    return max(counts.values()) >= 2


def structural_units(model):
    """Ordered ``[(name, 'node' | 'glue')]`` from the module tree (see module doc)."""
    contains = {}

    def contains_chain(m):
        key = id(m)
        if key not in contains:
            contains[key] = _is_chain(m) or any(contains_chain(c) for c in m.children())
        return contains[key]

    units = []

    def walk(m, prefix):
        chain = _is_chain(m)
        children = list(m.named_children())
        stages = [k for k, (_, c) in enumerate(children) if contains_chain(c)] if chain else []
        stage_types = {type(children[k][1]) for k in stages}
        for k, (name, child) in enumerate(children):
            full = prefix + name
            if contains_chain(child):
                walk(child, full + '.')
            elif chain and _is_blocklike(child):
                units.append((full, 'node'))
            elif stages and k > stages[-1] and type(child) in stage_types and _num_param_modules(child):
                # a one-block stage closing a chain of stages (timm MobileNetV3's ``blocks.6``,
                # its 1x1 conv to 960 channels): a stage like its siblings, so a node
                units.append((full, 'node'))
            else:
                units.append((full, 'glue'))

    if not contains_chain(model):
        raise DissectionError(
            f'no chain of repeated blocks found in {type(model).__name__}; list its nodes '
            'explicitly with a `nodes:` override in model_zoo.yml')
    walk(model, '')
    return units


def glue_candidates(model, nodes):
    """Every module that neither is, contains, nor sits inside a node.

    Which of them run between two nodes (and so belong to the next node) is
    decided by tracing, not by where they are registered: mmpretrain's ConvNeXt
    keeps its downsample layers in a list beside the stages. Tracing keeps the
    outermost ones that ran.
    """
    node_set = set(nodes)
    inside = set()
    for n in nodes:
        parts = n.split('.')
        inside.update('.'.join(parts[:i]) for i in range(len(parts)))
    out = []

    def walk(m, name):
        for child_name, child in m.named_children():
            full = f'{name}.{child_name}' if name else child_name
            if full in node_set:
                continue
            if full not in inside:
                out.append(full)
            walk(child, full)

    walk(model, '')
    return out


def find_nodes(model, nodes=None):
    """Node names of ``model``: derived from its structure, or a checked override."""
    modules = dict(model.named_modules())
    if nodes is not None:
        missing = [n for n in nodes if n not in modules]
        if missing:
            raise DissectionError(
                f'nodes override names modules that do not exist in {type(model).__name__}: '
                f'{missing[:5]}; valid names look like {list(modules)[1:6]}')
        if len(set(nodes)) != len(nodes):
            raise DissectionError('nodes override lists a module twice')
        for a in nodes:
            for b in nodes:
                if b.startswith(a + '.'):
                    raise DissectionError(f'nodes override lists {b} inside {a}; nodes must not nest')
        return list(nodes)
    return [name for name, kind in structural_units(model) if kind == 'node']


# --------------------------------------------------------------------------
# tracing: execution order, stem shell
# --------------------------------------------------------------------------
class _StopForward(Exception):

    def __init__(self, value):
        super().__init__('stop')
        self.value = value


class _Unused(nn.Module):
    """Stands in, inside a stem, for a module that the stem never runs."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise DissectionError(f'stem reached {self.name}, which did not run before the first node '
                              'when the stem was cut; the model takes another path for this input')


class _StopAt(nn.Module):
    """Replaces the first node inside a stem: hands its input back and stops."""

    def __init__(self, convention):
        super().__init__()
        self._convention = convention

    def forward(self, *args, **kwargs):
        raise _StopForward(self._convention.canonical_input(self, args))


def _shallow_copy(module):
    new = copy.copy(module)
    new.__dict__ = module.__dict__.copy()
    new._modules = OrderedDict(module._modules)
    new._parameters = OrderedDict(module._parameters)
    new._buffers = OrderedDict(module._buffers)
    for attr in ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
                 '_forward_hooks_with_kwargs', '_forward_pre_hooks_with_kwargs',
                 '_forward_hooks_always_called', '_state_dict_hooks', '_load_state_dict_pre_hooks'):
        if hasattr(new, attr):
            setattr(new, attr, OrderedDict())
    return new


def build_stem_shell(model, executed, first_node, convention):
    """A copy of ``model``'s skeleton keeping only what runs before ``first_node``.

    Modules that ran are shared (no weight copy); the first node is replaced by
    :class:`_StopAt`; modules that did not run are replaced by :class:`_Unused`
    so the stem carries only its own parameters.
    """
    ancestors = set()
    parts = first_node.split('.')
    for i in range(len(parts)):
        ancestors.add('.'.join(parts[:i]))
    # containers indexed by the parent's forward (a ModuleList) never fire
    # themselves but hold modules that did
    holders = set()
    for name in executed:
        p = name.split('.')
        holders.update('.'.join(p[:i]) for i in range(len(p)))

    def rebuild(module, name):
        new = _shallow_copy(module)
        for child_name, child in module.named_children():
            full = f'{name}.{child_name}' if name else child_name
            if full == first_node:
                new._modules[child_name] = _StopAt(convention)
            elif full in ancestors:
                new._modules[child_name] = rebuild(child, full)
            elif full in executed:
                new._modules[child_name] = child
            elif full in holders:
                new._modules[child_name] = rebuild(child, full)
            else:
                new._modules[child_name] = _Unused(full)
        return new

    return rebuild(model, '')


def trace_units(model, nodes, glue, x):
    """Run ``model`` once on ``x``; return the executed steps and each node's I/O.

    Returns ``(steps, fired_before_first, node_io)``: ``steps`` lists
    ``(unit name, node it belongs to)`` in execution order from the first node
    to the last (glue that ran between two nodes belongs to the next node);
    ``fired_before_first`` is every module that started before the first node;
    ``node_io[node] = (input of its first unit, output)`` in canonical layout.
    """
    modules = dict(model.named_modules())
    node_set = set(nodes)
    order, io, fired_before = [], {}, set()
    state = {'started': False}
    handles = []

    def pre_hook(name):

        def hook(mod, args):
            if not state['started']:
                if name == nodes[0]:
                    state['started'] = True
                else:
                    fired_before.add(name)
        return hook

    def unit_hook(name):

        def hook(mod, args, output):
            if not state['started']:
                return
            conv = convention_of(mod)
            io[name] = (conv.canonical_input(mod, args), conv.canonical_output(mod, args, output))
            order.append(name)
            if name == nodes[-1]:
                raise _StopForward(None)
        return hook

    try:
        for name, mod in modules.items():
            if name:
                handles.append(mod.register_forward_pre_hook(pre_hook(name)))
        for name in list(nodes) + list(glue):
            handles.append(modules[name].register_forward_hook(unit_hook(name)))
        try:
            with torch.no_grad():
                model(x)
        except _StopForward:
            pass
        else:
            raise DissectionError(f'the forward pass of {type(model).__name__} never ran its last '
                                  f'node {nodes[-1]}')
    finally:
        for h in handles:
            h.remove()
    seen = [n for n in order if n in node_set]
    if seen != list(nodes):
        raise DissectionError(
            f'nodes of {type(model).__name__} do not run once each in the listed order (ran '
            f'{seen[:4]}...); fix the `nodes:` override')
    # keep the outermost glue modules that ran (a Sequential, not its layers)
    ran = set(order)
    order = [n for n in order if n in node_set or not any(
        '.'.join(n.split('.')[:i]) in ran for i in range(1, len(n.split('.'))))]
    steps, pending = [], []
    for name in order:
        if name in node_set:
            steps.extend((g, name) for g in pending)
            steps.append((name, name))
            pending = []
        else:
            pending.append(name)
    prev_out = None
    for name, _ in steps:
        inp, out = io[name]
        if prev_out is not None and (prev_out.shape != inp.shape or not torch.equal(prev_out, inp)):
            raise DissectionError(
                f'{type(model).__name__}: the input of {name} is not the output of the unit before it '
                '(the forward does extra work between them), so DeRy cannot cut there; use a `nodes:` '
                'override that groups them, or register a CallConvention')
        prev_out = out
    first_unit = {}
    for name, owner in steps:
        first_unit.setdefault(owner, name)
    return steps, fired_before, {n: (io[first_unit[n]][0], io[n][1]) for n in nodes}


# --------------------------------------------------------------------------
# modules handed to users
# --------------------------------------------------------------------------
class Stem(nn.Module):
    """image -> input of the first node (canonical layout)."""

    def __init__(self, shell, first_node):
        super().__init__()
        self.shell = shell
        self.first_node = first_node
        self.flops = None  # set by ZooModel.stem(): measured on the whole source model
        self.stub_shape = None  # set while dery.models.model_complexity traces

    def forward(self, x):
        if self.stub_shape is not None:
            return x.new_zeros((x.shape[0], ) + tuple(self.stub_shape))
        tracing = torch._C._get_tracing_state()
        scope = tracing.current_scope() if tracing is not None else None
        try:
            self.shell(x)
        except _StopForward as stop:
            # Tracers that push a scope per module in forward hooks (mmengine.analysis, which
            # mmpretrain's get_flops.py uses) get no pop for the modules the stop unwound, and
            # torch aborts on the unbalanced scopes: pop them here.
            for _ in range(10000):
                if tracing is None or tracing.current_scope() == scope:
                    break
                tracing.pop_scope()
            return stop.value
        raise DissectionError(f'stem finished without reaching {self.first_node}')


class Cut(nn.Module):
    """Input of node ``start`` -> output of node ``end``, in canonical layout.

    ``units`` are the model's own modules (shared weights unless the cut was
    made with ``copy=True``), run one after another through their call
    conventions.
    """

    def __init__(self, units, unit_names, nodes, family):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.unit_names = list(unit_names)
        self.nodes = list(nodes)
        self.family = family

    def forward(self, x):
        for unit in self.units:
            x = convention_of(unit)(unit, x)
        return x

    def extra_repr(self):
        return f'nodes={self.nodes[0]}..{self.nodes[-1]} ({len(self.nodes)}), family={self.family}'
