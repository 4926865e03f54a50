"""DeRy registries.

``MODELS`` and ``DATASETS`` are children of mmpretrain's, so that with
``default_scope = 'dery'`` plain names such as ``ImageClassifier`` or
``CIFAR100`` resolve, and DeRy's own modules (``ReassembledBackbone``, stitch
layers) are found from mmpretrain configs. The five pipeline registries are
children of mmengine's root registries so that users can register their own
metric, partitioner, proxy or solver from ``custom_imports``.

Building an unknown type raises a ``KeyError`` (:class:`dery.errors.UnknownTypeError`) whose message lists the names
registered in that registry (and its parents), so a typo is one look away from
its fix.
"""
from mmengine.registry import Registry as _MMEngineRegistry
from mmpretrain import registry as mmpretrain_registry

from dery.errors import ConfigError, UnknownTypeError

#: registries whose classes' arguments are checked against the config before building
_CHECKED_ARGUMENTS = ('zoo adapter', 'similarity', 'partitioner', 'proxy', 'solver')
from dery.utils.checkpoint import register_safe_globals

# mmengine's own checkpoint loading (Runner resume, load_checkpoint) under torch's safe loader
register_safe_globals()


def accepted_arguments(obj):
    """The keyword arguments a registered class (or function) takes; None when it takes any.

    Follows ``**kwargs`` up the class hierarchy: ``LinearCKA(unbiased, **kwargs)``
    passes them on to ``BaseSimilarity(pooling, dtype)``, so it takes all three.
    """
    import inspect
    names = set()
    chain = obj.__mro__ if inspect.isclass(obj) else (obj, )
    for klass in chain:
        if klass is object:
            return names
        init = klass.__dict__.get('__init__') if inspect.isclass(obj) else klass
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            names.discard('self')
            return names
    return None


def unknown_arguments_message(name, obj, keys):
    """A one-line message for config keys ``keys`` that ``obj`` does not take, or None."""
    import difflib
    accepted = accepted_arguments(obj)
    if accepted is None:
        return None
    bad = [k for k in keys if k not in accepted and k != 'type']
    if not bad:
        return None
    close = sorted({c for k in bad for c in difflib.get_close_matches(k, sorted(accepted), n=2)})
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    return (f'{name} does not take {", ".join(repr(b) for b in bad)}{hint}; its arguments: '
            f'{", ".join(sorted(accepted)) or "none"}. Fix the config (a base config\'s leftover keys go away '
            'with `_delete_=True`)')


class Registry(_MMEngineRegistry):
    """An mmengine ``Registry`` whose unknown-type and unknown-argument errors list the choices."""

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

    def _register_module(self, module, module_name=None, force=False):
        super()._register_module(module, module_name, force)
        if _MIRROR['on']:
            self._mirror_into_parent(module_name or module.__name__)

    def _mirror_into_parent(self, names):
        """Register ``names`` (DeRy's modules) in the mmpretrain parent registry too, never over one of
        mmpretrain's own names: mmpretrain's tools and ``mmpretrain.apis.get_model`` build under
        the 'mmpretrain' scope and look there (see :func:`register_all_modules`)."""
        parent = self.parent
        if parent is None or parent.scope != 'mmpretrain':
            return
        mirrored = self.__dict__.setdefault('_mirrored', set())
        for name in [names] if isinstance(names, str) else names:
            if name not in parent._module_dict or name in mirrored:
                parent._module_dict[name] = self._module_dict[name]
                mirrored.add(name)

    def build(self, cfg, *args, **kwargs):
        if isinstance(cfg, dict) and isinstance(cfg.get('type'), str):
            name = cfg['type']
            obj = self.get(name)
            if obj is None:
                raise UnknownTypeError(
                    f"'{name}' is not registered in the {self.scope}::{self.name} "
                    f'registry; registered names: {", ".join(self._known_names())}. '
                    'Fix the `type` in your config, or import the module that '
                    'registers it (e.g. via `custom_imports`).')
            if self.name in _CHECKED_ARGUMENTS:
                msg = unknown_arguments_message(f'{self.name} {name}', obj, cfg.keys())
                if msg:
                    raise ConfigError(msg)
        if self.parent is None:
            # DeRy's own pipeline registries (zoo adapters, metrics, ...) have no node in another
            # scope's tree: build under 'dery' also while mmpretrain's tools set theirs
            from mmengine.registry import DefaultScope
            with DefaultScope.overwrite_default_scope(self.scope):
                return super().build(cfg, *args, **kwargs)
        return super().build(cfg, *args, **kwargs)


# Neural network modules: ReassembledBackbone, stitch layers, stems.
MODELS = Registry('model', parent=mmpretrain_registry.MODELS, scope='dery',
                  locations=['dery.models'])
# Datasets: mmpretrain's plus DeRy's generated / procedural datasets.
DATASETS = Registry('dataset', parent=mmpretrain_registry.DATASETS, scope='dery',
                    locations=['dery.datasets'])

# With ``default_scope = 'dery'`` the Runner looks for a 'dery' node in every
# registry tree; these children make mmpretrain's transforms, metrics, hooks...
# resolve by plain name (without them mmengine falls back to its root registries).
# Data transforms (mmpretrain's pipelines).
TRANSFORMS = Registry('transform', parent=mmpretrain_registry.TRANSFORMS, scope='dery')
# Samplers of the data loaders.
DATA_SAMPLERS = Registry('data sampler', parent=mmpretrain_registry.DATA_SAMPLERS, scope='dery')
# Metrics (Accuracy, ...).
METRICS = Registry('metric', parent=mmpretrain_registry.METRICS, scope='dery')
# Evaluators.
EVALUATORS = Registry('evaluator', parent=mmpretrain_registry.EVALUATORS, scope='dery')
# Hooks (EMA, visualisation, ...).
HOOKS = Registry('hook', parent=mmpretrain_registry.HOOKS, scope='dery', locations=['dery.engine'])
# Training / validation loops.
LOOPS = Registry('loop', parent=mmpretrain_registry.LOOPS, scope='dery')
# Optimizers.
OPTIMIZERS = Registry('optimizer', parent=mmpretrain_registry.OPTIMIZERS, scope='dery')
# Optimizer wrappers (AMP, gradient clipping).
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=mmpretrain_registry.OPTIM_WRAPPERS, scope='dery')
# Optimizer wrapper constructors (paramwise_cfg, layer decay).
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=mmpretrain_registry.OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='dery')
# Learning-rate and momentum schedulers.
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=mmpretrain_registry.PARAM_SCHEDULERS,
                            scope='dery')
# Weight initialisers (Pretrained, ...).
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=mmpretrain_registry.WEIGHT_INITIALIZERS,
                               scope='dery')
# Model wrappers (DDP).
MODEL_WRAPPERS = Registry('model_wrapper', parent=mmpretrain_registry.MODEL_WRAPPERS, scope='dery')
# Batch augments (Mixup, CutMix).
BATCH_AUGMENTS = Registry('batch augment', parent=mmpretrain_registry.BATCH_AUGMENTS, scope='dery')
# Task utilities.
TASK_UTILS = Registry('task util', parent=mmpretrain_registry.TASK_UTILS, scope='dery')
# Log processors.
LOG_PROCESSORS = Registry('log_processor', parent=mmpretrain_registry.LOG_PROCESSORS, scope='dery')
# Visualizers and their backends.
VISUALIZERS = Registry('visualizer', parent=mmpretrain_registry.VISUALIZERS, scope='dery')
VISBACKENDS = Registry('vis_backend', parent=mmpretrain_registry.VISBACKENDS, scope='dery')
# Runners and their constructors.
RUNNERS = Registry('runner', parent=mmpretrain_registry.RUNNERS, scope='dery')
RUNNER_CONSTRUCTORS = Registry('runner constructor', parent=mmpretrain_registry.RUNNER_CONSTRUCTORS,
                               scope='dery')
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

_MIRROR = dict(on=False)


def register_all_modules(init_default_scope=True):
    """Register every DeRy module, in DeRy's registries and in mmpretrain's (as
    ``mmpretrain.utils.register_all_modules``).

    mmpretrain's own tools (``tools/analysis_tools/*.py``, ``ImageClassificationInferencer``,
    ``mmpretrain.apis.get_model``) build under the 'mmpretrain' scope and look up
    names in mmpretrain's registries, where DeRy's child registries are not
    searched. After this call DeRy's models, data sets and hooks are found there
    too (never replacing one of mmpretrain's names), and so is every module
    registered in a DeRy registry afterwards (a project's ``custom_imports``).
    DeRy configs and ``assembled.py`` call it through
    ``custom_imports = dict(imports=['dery.all_modules'])``.

    Args:
        init_default_scope (bool): also make 'dery' the default scope (as
            mmpretrain's function does for 'mmpretrain').
    """
    import datetime

    from mmengine.registry import DefaultScope
    registries = [v for v in globals().values() if isinstance(v, Registry)]
    for reg in registries:
        reg.import_from_location()
        if reg.parent is not None and reg._module_dict:
            reg.parent.import_from_location()  # mmpretrain's own names first: never shadowed
    _MIRROR['on'] = True
    for reg in registries:
        reg._mirror_into_parent(list(reg._module_dict))
    if init_default_scope:
        current = DefaultScope.get_current_instance()
        if current is None or current.scope_name != 'dery':
            DefaultScope.get_instance(f'dery-{datetime.datetime.now()}', scope_name='dery')
