"""``ZooModel``: a pretrained network seen as a chain of nodes that can be cut."""
import copy as _copy
from collections import OrderedDict

import torch

from dery.errors import ConfigError
from .analysis import count_flops, count_params
from .dissect import (Cut, DissectionError, Stem, _StopForward, build_stem_shell,
                      convention_of, find_nodes, glue_candidates, trace_units)
from .layout import FAMILIES, TensorSpec


def node_index(name, nodes, node):
    """Index of ``node`` (a name or an int, negative counts from the end) in model ``name``'s ``nodes``."""
    if isinstance(node, int):
        if not -len(nodes) <= node < len(nodes):
            raise IndexError(f'{name} has {len(nodes)} nodes; got index {node}')
        return node % len(nodes)
    try:
        return nodes.index(node)
    except ValueError:
        raise KeyError(f'{name} has no node {node!r}; nodes: {nodes[0]} .. {nodes[-1]}') from None


class ZooModel:
    """A zoo network, its nodes, and exact cuts between them.

    Args:
        name (str): zoo name.
        model (nn.Module): the network (for mmpretrain: its backbone).
        family (str | None): ``cnn``, ``vit`` or ``swin``; inferred from the
            node outputs when None.
        nodes (list[str] | None): explicit node names (``model_zoo.yml``
            ``nodes`` override); derived from the structure when None.
        input_size (tuple): ``(C, H, W)`` used to probe shapes and FLOPs.
        entry: the ``model_zoo.yml`` entry the model came from, if any.

    Tensors between nodes use one layout per family (:mod:`dery.zoo.layout`):
    ``cnn`` ``[B, C, H, W]``, ``vit`` ``[B, N, C]`` with ``num_prefix_tokens``
    class/register tokens first, ``swin`` ``[B, H, W, C]``;
    :meth:`in_spec` / :meth:`out_spec` give a node's typed shape contract.
    """

    def __init__(self, name, model, family=None, nodes=None, input_size=(3, 224, 224), entry=None):
        self.name = name
        self.model = model
        self.model.eval()
        self.entry = entry
        self.input_size = tuple(int(s) for s in input_size)
        self.nodes = find_nodes(model, nodes)
        self._modules = dict(model.named_modules())
        self._glue = glue_candidates(model, self.nodes)
        if family is not None and family not in FAMILIES:
            raise ConfigError(f'zoo model {name}: family must be one of {FAMILIES}, got {family!r}')
        self._family = family
        self._trace = None
        self._flops = None

    # ------------------------------------------------------------------ probing
    def _example(self, batch=2):
        g = torch.Generator().manual_seed(0)
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else torch.device('cpu')
        return torch.randn((batch, ) + self.input_size, generator=g).to(device)

    def check_input_size(self):
        """Trace the model at ``input_size`` now; one line naming the entry when it cannot run at it."""
        from .entry import ZooError
        try:
            self._traced()
        except DissectionError:
            raise
        except Exception as e:  # noqa: BLE001 - a model that fails at this size: the user picks another size
            raise ZooError(f"zoo model '{self.name}' cannot run at input size {list(self.input_size)} "
                           f'({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}); give its entry '
                           '`kwargs` that fit (e.g. img_size=..., window_size=...) or change zoo.input_size') from None

    def _traced(self):
        if self._trace is None:
            was_training = self.model.training
            self.model.eval()
            try:
                steps, fired, io = trace_units(self.model, self.nodes, self._glue, self._example())
            finally:
                self.model.train(was_training)
            units = OrderedDict((n, []) for n in self.nodes)
            for unit, owner in steps:
                units[owner].append(unit)
            shapes = {n: (tuple(i.shape[1:]), tuple(o.shape[1:])) for n, (i, o) in io.items()}
            self._trace = dict(units=units, fired=fired, shapes=shapes)
        return self._trace

    @property
    def family(self):
        if self._family is None:
            out = self._traced()['shapes'][self.nodes[-1]][1]
            if len(out) == 2:
                self._family = 'vit'
            elif 'swin' in type(self.model).__name__.lower():
                self._family = 'swin'
            else:
                self._family = 'cnn'
        return self._family

    @property
    def num_prefix_tokens(self):
        """Class/register tokens in front of the patch tokens (ViTs), else 0."""
        if self.family != 'vit':
            return 0
        m = self.model
        for attr in ('num_prefix_tokens', 'num_extra_tokens'):
            if isinstance(getattr(m, attr, None), int):
                return getattr(m, attr)
        return int(any(hasattr(m, a) for a in ('cls_token', 'class_token')))

    def index(self, node):
        """Index of ``node`` (a name or an int, negative counts from the end)."""
        return node_index(self.name, self.nodes, node)

    def units(self, node):
        """Module names run for ``node``: glue attached in front of it, then the node."""
        return list(self._traced()['units'][self.nodes[self.index(node)]])

    # ------------------------------------------------------------------ cutting
    def stem(self, copy=False):
        """``nn.Module``: image -> input of the first node (canonical layout)."""
        trace = self._traced()
        first = self.nodes[0]
        shell = build_stem_shell(self.model, trace['fired'], first,
                                 convention_of(self._modules[first]))
        stem = Stem(shell, first)
        if self._flops is not None:
            stem.flops = self._flops['stem']
        return _copy.deepcopy(stem) if copy else stem

    def cut(self, start, end, copy=False):
        """``nn.Module`` mapping the input of node ``start`` to the output of ``end``.

        Shares the zoo model's weights unless ``copy=True``.
        """
        i, j = self.index(start), self.index(end)
        if i > j:
            raise ConfigError(f'{self.name}: cut start {self.nodes[i]} comes after end {self.nodes[j]}')
        names = [u for n in self.nodes[i:j + 1] for u in self.units(n)]
        cut = Cut([self._modules[u] for u in names], names, self.nodes[i:j + 1], self.family)
        return _copy.deepcopy(cut) if copy else cut

    # ------------------------------------------------------------------ capture
    def node_outputs(self, x, nodes=None, on_output=None):
        """One forward pass; ``OrderedDict`` node -> output (canonical layout).

        The pass stops after the last requested node (the head never runs).
        ``on_output(node, output)``: called for each requested node as soon as
        its output exists, in node order; the outputs are then not kept (memory:
        one node output at a time) and an empty dict is returned.
        """
        wanted = list(self.nodes) if nodes is None else [self.nodes[self.index(n)] for n in nodes]
        last = max(self.index(n) for n in wanted)
        outs, handles = {}, []
        keep = set(wanted)

        def hook(name):

            def fn(mod, args, output):
                if name in keep:
                    out = convention_of(mod).canonical_output(mod, args, output)
                    if on_output is None:
                        outs[name] = out
                    else:
                        on_output(name, out)
                        del out
                if name == self.nodes[last]:
                    raise _StopForward(None)
            return fn

        for n in set(wanted) | {self.nodes[last]}:
            handles.append(self._modules[n].register_forward_hook(hook(n)))
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return OrderedDict() if on_output is not None else OrderedDict((n, outs[n]) for n in wanted)

    # ------------------------------------------------------------------ sizes
    def shapes(self, node):
        """``(input shape, output shape)`` of ``node`` without the batch dim."""
        return self._traced()['shapes'][self.nodes[self.index(node)]]

    def in_spec(self, node):
        """:class:`~dery.zoo.layout.TensorSpec` of what ``node`` receives (node 0: the stem's output)."""
        return TensorSpec(self.family, self.shapes(node)[0], self.num_prefix_tokens)

    def out_spec(self, node):
        """:class:`~dery.zoo.layout.TensorSpec` of what ``node`` returns."""
        return TensorSpec(self.family, self.shapes(node)[1], self.num_prefix_tokens)

    def _unit_params(self, names):
        return count_params([self._modules[u] for u in names])

    def params(self, start=0, end=-1):
        """Parameters of the cut ``[start, end]`` (pre-node glue included)."""
        i, j = self.index(start), self.index(end)
        return self._unit_params([u for n in self.nodes[i:j + 1] for u in self.units(n)])

    def stem_params(self):
        return count_params([self.stem()])

    def _flop_table(self):
        # One jit trace of the whole model: the stem cannot be traced on its own
        # (it stops the forward with an exception, which breaks jit's scopes).
        if self._flops is None:
            by_module = count_flops(self.model, self._example(batch=1), by_module=True)
            units = {u: by_module.get(u, 0) for n in self.nodes for u in self.units(n)}
            first = self.nodes[0]
            ancestors = {'.'.join(first.split('.')[:i]) for i in range(len(first.split('.')))}
            stem = sum(by_module.get(m, 0) for m in self._traced()['fired']
                       if m.rpartition('.')[0] in ancestors and m not in ancestors)
            self._flops = dict(stem=stem, units=units)
        return self._flops

    def flops(self, start=0, end=-1):
        """FLOPs (multiply-adds, mmengine's convention) of the cut at ``input_size``."""
        i, j = self.index(start), self.index(end)
        table = self._flop_table()['units']
        return sum(table[u] for n in self.nodes[i:j + 1] for u in self.units(n))

    def stem_flops(self):
        return self._flop_table()['stem']

    def cut_at(self, start, end, grid, flops=True):
        """``(out TensorSpec, FLOPs)`` of the cut ``[start, end]`` run on an input of spatial size
        ``grid`` ``(H, W)`` instead of its own (``assembly.resolution='chain'``).

        At the node's own input size this is ``(out_spec(end), flops(start, end))``;
        elsewhere the cut is run once on zeros for its output shape and traced
        once for its FLOPs (both memoised; ``flops=False``: the shape only, FLOPs
        None). Raises when the cut cannot run at that size.
        """
        i, j = self.index(start), self.index(end)
        grid = (int(grid[0]), int(grid[1]))
        src = self.in_spec(i)
        if grid == src.grid:
            return self.out_spec(j), (self.flops(i, j) if flops else None)
        cache = self.__dict__.setdefault('_at_cache', {})
        p = next(self.model.parameters(), None)
        x = src.with_grid(*grid).zeros(1, device=p.device if p is not None else None)
        need = [k for k in ((i, j, grid), (i, j, grid, 'flops') if flops else None) if k and k not in cache]
        if need:
            cut = self.cut(i, j)
            modes = {m: m.training for m in cut.modules()}
            cut.eval()  # the zoo's own modules: no running-statistics updates, as they were afterwards
            try:
                with torch.no_grad():
                    out = cut(x)
                cache[(i, j, grid)] = TensorSpec(self.family, tuple(out.shape[1:]), self.num_prefix_tokens)
                if flops:
                    cache[(i, j, grid, 'flops')] = int(count_flops(cut, x))
            finally:
                for m, mode in modes.items():
                    m.training = mode
        return cache[(i, j, grid)], (cache[(i, j, grid, 'flops')] if flops else None)

    def node_table(self):
        """One dict per node: name, input/output shapes, params and FLOPs."""
        rows = []
        for k, n in enumerate(self.nodes):
            ins, outs = self.shapes(n)
            rows.append(dict(index=k, name=n, glue=self.units(n)[:-1], in_shape=list(ins),
                             out_shape=list(outs), params=self.params(k, k), flops=self.flops(k, k)))
        return rows

    def __repr__(self):
        fam = self._family or '?'
        return f'ZooModel({self.name!r}, {type(self.model).__name__}, family={fam}, nodes={len(self.nodes)})'


__all__ = ['ZooModel', 'DissectionError', 'FAMILIES', 'node_index']
