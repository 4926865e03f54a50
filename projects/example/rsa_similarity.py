"""A similarity metric registered from outside ``dery``: representational similarity analysis.

RSA (Kriegeskorte et al. 2008) compares two representations through their
*representational dissimilarity matrices* (RDMs): for each node, the ``n x n``
matrix of ``1 - corr(x_i, x_j)`` between the feature vectors of the probe
samples; two nodes are as similar as the Pearson (or Spearman) correlation of
their RDMs' upper triangles. Unlike CKA it only looks at the rank/shape of the
sample geometry, and is invariant to scaling a node's features.

Memory: the features given (as the exact metrics of ``dery.similarity``), and
``n (n - 1) / 2`` numbers per node in ``compute``: keep the probe small.
"""
import torch

from dery.registry import SIMILARITIES
from dery.similarity import BaseSimilarity


@SIMILARITIES.register_module()
class RSASimilarity(BaseSimilarity):
    """RSA between node representations.

    Args:
        kind (str): ``'pearson'`` (default) or ``'spearman'`` correlation between RDMs.
        pooling (str), dtype (str): as :class:`dery.similarity.BaseSimilarity`.
    """

    streaming = False   # keeps every sample until compute()
    symmetric = True    # compute() of update(x) is a symmetric matrix

    def __init__(self, kind='pearson', **kwargs):
        if kind not in ('pearson', 'spearman'):
            raise ValueError(f"RSASimilarity kind must be 'pearson' or 'spearman', got {kind!r}")
        self.kind = kind
        super().__init__(**kwargs)

    def settings(self):
        # everything that changes the values: DeRy's similarity cache keys use it
        return dict(super().settings(), kind=self.kind)

    # ------------------------------------------------------------------ interface
    def reset(self):
        self._a, self._b, self._sym = None, None, None

    def update(self, feats_a, feats_b=None):
        fa = [f.reshape(f.shape[0], -1).detach().cpu() for f in feats_a]
        fb = None if feats_b is None else [f.reshape(f.shape[0], -1).detach().cpu() for f in feats_b]
        sym = fb is None
        if self._sym is not None and self._sym != sym:
            raise ValueError('RSASimilarity.update: do not mix update(feats) and update(feats_a, feats_b); '
                             'call reset() first')
        self._sym = sym
        if self._a is None:
            self._a = [[f] for f in fa]
            self._b = None if sym else [[f] for f in fb]
            return
        for chunks, f in zip(self._a, fa):
            chunks.append(f)
        if not sym:
            for chunks, f in zip(self._b, fb):
                chunks.append(f)

    def compute(self):
        if self._a is None:
            raise RuntimeError('RSASimilarity.compute() before any update()')
        za = self._rdm_vectors([torch.cat(c) for c in self._a])
        zb = za if self._sym else self._rdm_vectors([torch.cat(c) for c in self._b])
        return (za @ zb.T) / za.shape[1]

    # ------------------------------------------------------------------ helpers
    def _rdm_vectors(self, feats):
        """Standardised upper triangles of the RDMs, one row per node (zeros when constant)."""
        n = feats[0].shape[0]
        if n < 3:
            raise ValueError(f'RSA needs at least 3 samples, got {n}')
        iu = torch.triu_indices(n, n, offset=1)
        rows = []
        for x in feats:
            x = x.to(self.dtype)
            x = x - x.mean(1, keepdim=True)
            norm = x.norm(dim=1, keepdim=True)
            x = x / norm.clamp_min(torch.finfo(self.dtype).tiny)
            rdm = 1 - x @ x.T
            v = rdm[iu[0], iu[1]]
            if self.kind == 'spearman':
                v = v.argsort().argsort().to(self.dtype)
            v = v - v.mean()
            std = v.pow(2).mean().sqrt()
            rows.append(v / std if std > 1e-12 * max(1.0, float(v.abs().max())) else torch.zeros_like(v))
        return torch.stack(rows)
