"""Functional similarity between the nodes of zoo models (DeRy stage 1).

``compute_similarity`` runs the stage (feature capture over a probe set,
caching, distributed, outputs); the metrics are registered in
``dery.registry.SIMILARITIES`` and share one interface
(``update(feats_a, feats_b)`` / ``compute()`` / ``reset()``).
"""
from .capture import (DEFAULT_PREPROCESSOR, ProbeSet, capture_batch, capture_nodes, model_key,
                      pooled_dims)
from .metrics import (CCA, SVCCA, BaseSimilarity, LinearCKA, LinearRegression, MinibatchCKA, RBFCKA,
                      StoredFeatures)
from .pipeline import SimilarityResult, compute_similarity

__all__ = ['compute_similarity', 'SimilarityResult', 'BaseSimilarity', 'StoredFeatures', 'LinearCKA',
           'MinibatchCKA', 'RBFCKA', 'LinearRegression', 'SVCCA', 'CCA',
           'ProbeSet', 'pooled_dims', 'capture_batch', 'capture_nodes', 'model_key',
           'DEFAULT_PREPROCESSOR']
