"""Check a DeRy config before any work: every config error in one line, within seconds.

``check_config(cfg, upto)`` builds every registry object of the stages up to
``upto`` with its arguments (similarity metric, partitioner, proxy, solver),
resolves the zoo entries, builds the probe and target data sets and checks the
numbers against them (probe and proxy sample counts, ``num_sets``, block
indices of the backbone, the head's classes against the training data), all
before a model runs. The APIs call it first; the check that needs the zoo's
node lists (``num_sets`` against the shortest model) runs in the partition
stage once the models are built, before the first forward pass.
"""
from dery.errors import ConfigError
from dery.registry import DATASETS, PARTITIONERS, PROXIES, SIMILARITIES, SOLVERS
from dery.utils import to_plain

__all__ = ['check_config', 'check_head_classes', 'STAGES']

STAGES = ('partition', 'assembly', 'train')


def _section(cfg, key, example):
    value = cfg.get(key)
    if value is None:
        raise ConfigError(f'the config has no `{key}`; add one, e.g. {key} = {example}')
    return to_plain(value)


def _check_indices(name, indices, k):
    if indices is True or indices is False or indices is None:
        return
    for i in ([indices] if isinstance(indices, int) else list(indices)):
        if not isinstance(i, int) or not -k <= i < k:
            raise ConfigError(f'model.backbone.{name} has index {i!r}, but the assembly has {k} blocks '
                              f'(num_sets={k}): use indices in 0..{k - 1} (or -{k}..-1)')


def _dataset_len(ds_cfg, what):
    try:
        ds = DATASETS.build(dict(ds_cfg))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a data set that cannot be built is the user's to fix
        raise ConfigError(f'{what}: cannot build {ds_cfg.get("type")} ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}); check its config and data_root') from None
    return ds, len(ds)


def check_config(cfg, upto='assembly'):
    """Raise :class:`~dery.errors.ConfigError` on the first problem of the stages up to ``upto``."""
    from dery.similarity.capture import ProbeSet
    from dery.similarity.pipeline import PIPELINE_KEYS, STORES
    from dery.zoo import ZooCache
    if upto not in STAGES:
        raise ValueError(f'upto must be one of {STAGES}, got {upto!r}')
    zoo = ZooCache.from_config(cfg.get('zoo'))
    from dery.assembly.context import is_fixed
    if upto != 'partition' and is_fixed(cfg):
        return _check_fixed(cfg, zoo, upto)
    if len(zoo.names) < 2:
        raise ConfigError(f'the zoo has {len(zoo.names)} model ({", ".join(zoo.names)}): DeRy reassembles blocks '
                          'of several models; list at least two in zoo.models')
    similarity = _section(cfg, 'similarity', "dict(type='LinearCKA')")
    store = similarity.get('store', 'features')
    if store not in STORES:
        raise ConfigError(f'similarity.store must be one of {", ".join(STORES)}, got {store!r}')
    metric = SIMILARITIES.build({k: v for k, v in similarity.items() if k not in PIPELINE_KEYS})
    if store == 'accumulators' and not metric.streaming:
        raise ConfigError(f"similarity.store='accumulators' needs a streaming metric (MinibatchCKA); "
                          f"{similarity.get('type')} needs all samples: use store='features'")
    part_cfg = _section(cfg, 'partitioner', "dict(type='CoverSetPartitioner', num_sets=4)")
    PARTITIONERS.build(part_cfg)
    ProbeSet(_section(cfg, 'probe', 'dict(dataset=..., batch_size=32)'))
    if upto == 'partition':
        return zoo
    k = int(part_cfg.get('num_sets', 4))
    proxy = PROXIES.build(_section(cfg, 'proxy', "dict(type='NASWOT')"))
    SOLVERS.build(_section(cfg, 'solver', "dict(type='ILPSolver')"))
    from dery.solvers import normalize_constraints
    normalize_constraints(_section(cfg, 'constraints', 'dict(params=(None, 10_000_000), flops=(None, None))'))
    from dery.assembly.context import check_assembly_options
    opts = check_assembly_options(cfg.get('assembly'))
    target = _section(cfg, 'target', 'dict(dataset=...)')
    if 'dataset' not in target:
        raise ConfigError('target has no `dataset`: the proxy scores candidates on it, e.g. '
                          'target = dict(dataset=dict(type=..., ...))')
    _, n_target = _dataset_len(target['dataset'], 'target.dataset')
    need = proxy.num_batches * proxy.batch_size
    if n_target < need:
        raise ConfigError(f'the proxy asks for {proxy.num_batches} x {proxy.batch_size} = {need} target samples, '
                          f'the target data set has {n_target}; lower proxy.num_batches or proxy.batch_size')
    if opts['stitch_init'] == 'lstsq' and opts['stitch_samples'] > need:
        raise ConfigError(f"assembly.stitch_samples={opts['stitch_samples']} is more than the {need} target "
                          'images the proxy draws (the stitches are fitted on them); lower it or raise the '
                          'proxy batches')
    model = to_plain(cfg.get('model') or {})
    bb = model.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone':
        _check_indices('frozen_blocks', bb.get('frozen_blocks', False), k)
        _check_indices('out_indices', bb.get('out_indices', (-1, )), k)
    if 'head' not in model:
        raise ConfigError('model has no `head`; the assembly measures the classifier with its head')
    if upto == 'train':
        check_head_classes(cfg)
    return zoo


def _check_fixed(cfg, zoo, upto):
    """A config that gives its assembly (``assembly.blocks``): no probe, partitioner, proxy, solver or
    target is needed (target only when its stitches are fitted)."""
    from dery.assembly.context import check_assembly_options
    opts = check_assembly_options(cfg.get('assembly'))
    for k, b in enumerate(opts['blocks']):
        if b['model'] not in zoo:
            raise ConfigError(f"assembly.blocks[{k}] names {b['model']!r}, which is not in the zoo "
                              f"({', '.join(zoo.names)}); add it to zoo.models")
    if cfg.get('constraints') is not None:
        from dery.solvers import normalize_constraints
        normalize_constraints(to_plain(cfg.constraints))
    if opts['stitch_init'] == 'lstsq':
        target = _section(cfg, 'target', "dict(dataset=...) (the stitches are fitted on its images; or "
                                         "assembly.stitch_init='random')")
        if 'dataset' not in target:
            raise ConfigError('target has no `dataset`: the stitches are fitted on its images')
        _, n = _dataset_len(target['dataset'], 'target.dataset')
        if n < opts['stitch_samples']:
            raise ConfigError(f"assembly.stitch_samples={opts['stitch_samples']} is more than the {n} target images")
    k = len(opts['blocks'])
    model = to_plain(cfg.get('model') or {})
    bb = model.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone':
        for name in ('frozen_blocks', 'out_indices'):
            try:
                _check_indices(name, bb.get(name, (-1, ) if name == 'out_indices' else False), k)
            except ConfigError as e:
                raise ConfigError(str(e).replace(f'(num_sets={k})', '(assembly.blocks)')) from None
    if 'head' not in model:
        raise ConfigError('model has no `head`; the assembly measures the classifier with its head')
    if upto == 'train':
        check_head_classes(cfg)
    return zoo


def check_head_classes(cfg):
    """The head's ``num_classes`` against the classes of the training data set (lazily built)."""
    head = (cfg.get('model') or {}).get('head') or {}
    expected = head.get('num_classes')
    loader = cfg.get('train_dataloader') or {}
    ds_cfg = to_plain(loader.get('dataset') or {})
    if expected is None or not ds_cfg:
        return
    try:
        ds = DATASETS.build(dict(ds_cfg, lazy_init=True))
    except TypeError:
        ds = DATASETS.build(ds_cfg)  # a data set without lazy_init
    except Exception:  # noqa: BLE001 - the Runner will report a data set it cannot build
        return
    classes = (getattr(ds, 'metainfo', None) or {}).get('classes')
    if classes and len(classes) != int(expected):
        raise ConfigError(f'the model head predicts {expected} classes but the train data set '
                          f'({type(ds).__name__}) has {len(classes)}; set model.head.num_classes={len(classes)} '
                          '(and data_preprocessor.num_classes) in the config')
