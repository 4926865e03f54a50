"""DeRy registries.

``MODELS`` and ``DATASETS`` are children of mmpretrain's, so that with
``default_scope = 'dery'`` plain names such as ``ImageClassifier`` or
``CIFAR100`` resolve, and DeRy's own modules (``ReassembledBackbone``, stitch
layers) are found from mmpretrain configs. The five pipeline registries are
children of mmengine's root registries so that users can register their own
metric, partitioner, proxy or solver from ``custom_imports``.

Building an unknown type raises a ``KeyError`` whose message lists the names
registered in that registry (and its parents), so a typo is one look away from
its fix.
"""
from mmengine.registry import Registry as _MMEngineRegistry
from mmpretrain.registry import DATASETS as MMPRETRAIN_DATASETS
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS


class Registry(_MMEngineRegistry):
    """An mmengine ``Registry`` whose unknown-type error lists the choices."""

    def _lineage(self):
        reg = self
        while reg is not None:
            reg.import_from_location()
            yield reg
            reg = reg.parent

    def _known_names(self):
        return sorted({n for reg in self._lineage() for n in reg.module_dict})

    def get(self, key):
        obj = super().get(key)
        if obj is None and isinstance(key, str):
            # mmengine only imports the locations of the registry it is asked,
            # not of its parents; import them and look again.
            for _ in self._lineage():
                pass
            obj = super().get(key)
        return obj

    def build(self, cfg, *args, **kwargs):
        if isinstance(cfg, dict) and isinstance(cfg.get('type'), str):
            name = cfg['type']
            if self.get(name) is None:
                raise KeyError(
                    f"'{name}' is not registered in the {self.scope}::{self.name} "
                    f'registry; registered names: {", ".join(self._known_names())}. '
                    'Fix the `type` in your config, or import the module that '
                    'registers it (e.g. via `custom_imports`).')
        return super().build(cfg, *args, **kwargs)


# Neural network modules: ReassembledBackbone, stitch layers, stems.
MODELS = Registry('model', parent=MMPRETRAIN_MODELS, scope='dery',
                  locations=['dery.models'])
# Datasets: mmpretrain's plus DeRy's generated / procedural datasets.
DATASETS = Registry('dataset', parent=MMPRETRAIN_DATASETS, scope='dery',
                    locations=['dery.datasets'])
# Zoo adapters: build a pretrained model from timm, mmpretrain, torchvision or a local file.
ZOO_ADAPTERS = Registry('zoo adapter', scope='dery', locations=['dery.zoo'])
# Functional similarity metrics between node features (CKA and friends).
SIMILARITIES = Registry('similarity', scope='dery', locations=['dery.similarity'])
# Partitioners: cut zoo models into blocks and group them into equivalence sets.
PARTITIONERS = Registry('partitioner', scope='dery', locations=['dery.partition'])
# Training-free proxies that score a network on target data (NASWOT, SynFlow...).
PROXIES = Registry('proxy', scope='dery', locations=['dery.proxies'])
# Solvers that pick one block per stage under params/FLOPs budgets.
SOLVERS = Registry('solver', scope='dery', locations=['dery.solvers'])
