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
from dery.similarity import StoredFeatures


@SIMILARITIES.register_module()
class RSASimilarity(StoredFeatures):
    """RSA between node representations.

    Args:
        kind (str): ``'pearson'`` (default) or ``'spearman'`` correlation between RDMs.
        pooling (str), dtype (str): as :class:`dery.similarity.BaseSimilarity`.

    :class:`~dery.similarity.StoredFeatures` checks and keeps the batches (all samples are
    needed at once); only :meth:`compute_features` is written here.
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
    def compute_features(self, xa, xb):
        # StoredFeatures checked and kept every batch; xa, xb: lists of [n, D] tensors (xb None: xa vs xa)
        za = self._rdm_vectors(xa)
        zb = za if xb is None else self._rdm_vectors(xb)
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
