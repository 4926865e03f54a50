"""The stitch features of the assembly stage: a few node outputs per zoo model, on disk.

A stitch into block ``k`` is fitted from block ``k-1``'s output in its own
model to what block ``k``'s first node receives in its own model
(:meth:`dery.models.ReassembledBackbone.fit_stitches`). Candidates keep their
position, so with contiguous blocks those are the outputs of the partition's
block ends (blocks ``0 .. K-2``) of every model: :class:`StoredNodeFeatures`
keeps just these, written while the model runs its surrogate pass and read
back memory-mapped when a candidate is fitted, so memory does not grow with
the zoo (the old in-memory features of every node of every model did).
"""
import os
import os.path as osp
import re
import shutil
import tempfile
import weakref

import numpy as np
import torch

__all__ = ['StoredNodeFeatures', 'FeatureStore']


class StoredNodeFeatures:
    """Some node outputs of one zoo model on the stitch images (the interface of
    :class:`~dery.zoo.NodeFeatures`: :meth:`output_of`, :meth:`input_of`)."""

    def __init__(self, name, nodes, root):
        self.name, self.nodes, self.root = name, list(nodes), root
        self._paths = {}

    def put(self, node, tensor):
        safe = re.sub(r'[^A-Za-z0-9._-]+', '_', f'{self.name}__{node}')
        path = osp.join(self.root, f'{safe}.npy')
        np.save(path, tensor.detach().cpu().contiguous().numpy())
        self._paths[node] = path

    def __contains__(self, node):
        return (node if isinstance(node, str) else self.nodes[node]) in self._paths

    def output_of(self, node):
        node = node if isinstance(node, str) else self.nodes[node]
        if node not in self._paths:
            raise KeyError(f'the assembly stage kept the outputs of {sorted(self._paths)} of {self.name}, not {node}')
        return torch.from_numpy(np.load(self._paths[node], mmap_mode='c'))

    def input_of(self, index):
        if index == 0:
            raise KeyError(f'the assembly stage keeps no stem output of {self.name} (no stitch feeds block 0)')
        return self.output_of(index - 1)


class FeatureStore(dict):
    """``{model: StoredNodeFeatures}`` in a temporary folder (under ``work_dir`` when given), removed
    when the store is garbage collected or :meth:`close` d."""

    def __init__(self, work_dir=None):
        super().__init__()
        if work_dir:
            os.makedirs(work_dir, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix='.assembly_features_', dir=work_dir or None)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)

    def new(self, name, nodes):
        self[name] = StoredNodeFeatures(name, nodes, self.root)
        return self[name]

    def close(self):
        self._finalizer()
