"""Per-block surrogate scores: the integer program's linear objective.

For each block, the NASWOT log-determinant of the binary activation-pattern
kernel of the block's node outputs inside its source model, on the target
batches. NASWOT is not additive over blocks, but a block whose units separate
the target samples well keeps doing so after stitching; the whole-model proxy
re-ranks the ILP's top-M solutions, which corrects the surrogate's error.

The kernels are made node by node while the model runs (:func:`node_kernel`
on each node output as it appears, or :class:`NodeKernels` over small
batches), so a model's node outputs are never held all at once;
:class:`~dery.assembly.AssemblyContext` makes them in the same forward pass
that captures the stitch features.
"""
import torch

from dery.proxies import sign_agreements

__all__ = ['naswot_block_scores', 'node_kernel', 'block_scores', 'NodeKernels']


@torch.no_grad()
def node_kernel(out, generator, max_units=65536):
    """The NASWOT kernel ``[n, n]`` of one node output ``[n, ...]`` (at most ``max_units`` units, drawn
    with ``generator``: the draws follow the order of the calls)."""
    flat = out.flatten(1)
    perm = _draw(flat.shape[1], generator, max_units)
    return sign_agreements(flat if perm is None else flat.index_select(1, perm))


def _draw(units, generator, max_units):
    """The ``max_units`` units drawn (None: all), sorted: the kernel does not depend on the order of the
    units, and a sorted gather reads memory in order (5x faster than a random one on a large output)."""
    if units <= max_units:
        return None
    return torch.randperm(units, generator=generator)[:max_units].sort().values


class NodeKernels:
    """The :func:`node_kernel` of every node of one model, from its node outputs given chunk by chunk
    (rows: samples, in order). The unit draws happen at a node's first chunk, in node order, as
    :func:`node_kernel` would draw them on the whole batch; the sign codes are kept as booleans, so a
    model runs over the target images in small batches (memory: one small batch's activations)."""

    def __init__(self, generator, max_units=65536):
        self.g, self.max_units = generator, max_units
        self._perm, self._units, self._codes = {}, {}, {}

    def draw(self, node, units):
        """Make the unit draws of ``node`` (``units`` per sample) now, as its first chunk would: a node
        whose outputs are never given still takes its draws, so the nodes after it draw the same."""
        self._perm[node], self._units[node] = _draw(units, self.g, self.max_units), int(units)

    @torch.no_grad()
    def add(self, node, out):
        flat = out.flatten(1)
        if node not in self._perm:
            self.draw(node, flat.shape[1])
        if self._units[node] != flat.shape[1]:
            raise RuntimeError(f'surrogate: node {node} has {flat.shape[1]} units per sample, its draws were made '
                               f'for {self._units[node]}')
        perm = self._perm[node]
        self._codes.setdefault(node, []).append((flat if perm is None else flat.index_select(1, perm)) > 0)

    @torch.no_grad()
    def kernel(self, node):
        return sign_agreements(torch.cat(self._codes.pop(node)))


@torch.no_grad()
def block_scores(name, zm, blocks, kernels, only=None):
    """``{'name:j': score}`` from the node ``kernels`` (in node order) of model ``zm`` (a ZooModel or
    ZooCard) for its partition ``blocks`` (``only``: the indices ``j`` to score; the kernels of the
    other blocks' nodes may be None)."""
    scores = {}
    for j, b in enumerate(blocks):
        if only is not None and j not in only:
            continue
        s, e = zm.index(b.start), zm.index(b.end)
        k = sum(kernels[s:e + 1]).double()
        k = k + 1e-3 * torch.eye(k.shape[0], dtype=k.dtype)
        scores[f'{name}:{j}'] = float(torch.linalg.slogdet(k)[1])
    return scores


@torch.no_grad()
def naswot_block_scores(part, zoo, images, max_units=65536, seed=0):
    """``{'model:j': score}``: per-block NASWOT log-det of the node-output sign patterns."""
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, mb in part.models.items():
        zm = zoo[name]
        kernels = {}
        zm.node_outputs(images, on_output=lambda node, out: kernels.__setitem__(node, node_kernel(out, g, max_units)))
        scores.update(block_scores(name, zm, mb.blocks, [kernels[n] for n in zm.nodes]))
    return scores
