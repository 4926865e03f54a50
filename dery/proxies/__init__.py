"""Training-free proxies that score a network on a few target batches.

``NASWOT`` (the paper's default), ``SynFlow``, ``SNIP``, ``GradNorm``, ``Jacov`` and
``Fisher``, and the transferability estimators ``LogME``, ``HScore``, ``TransRate`` and
``GBC`` (scores of the pooled penultimate features on labelled target data), all
registered in ``dery.registry.PROXIES``::

    proxy = PROXIES.build(dict(type='NASWOT', num_batches=5, batch_size=32, seed=0))
    batches = proxy.sample(data)       # optional: reuse the same batches for many models
    score = proxy.score(model, batches)  # float, higher is better; model left as found
"""
from .base import BaseProxy, model_output, pool_features, preserve_model_state, prunable_weights
from .data import ProxyBatches, sample_batches
from .gradient import SNIP, Fisher, GradNorm, SynFlow
from .jacov import Jacov
from .naswot import NASWOT, activation_modules, sign_agreements
from .transferability import GBC, HScore, LogME, TransRate

__all__ = ['BaseProxy', 'NASWOT', 'SynFlow', 'SNIP', 'GradNorm', 'Jacov', 'Fisher', 'LogME', 'HScore',
           'TransRate', 'GBC', 'sample_batches', 'ProxyBatches', 'preserve_model_state', 'pool_features',
           'model_output', 'prunable_weights', 'activation_modules', 'sign_agreements']
