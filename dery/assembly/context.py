"""``AssemblyContext``: everything a solver run needs, and the builder of candidate networks."""
import torch
from mmengine.registry import DefaultScope

from dery.errors import ConfigError
from dery.models import ReassembledBackbone
from dery.proxies import sample_batches
from dery.registry import DATASETS, MODELS, PROXIES
from dery.utils import to_plain
from dery.zoo import capture_node_features
from .surrogate import naswot_block_scores
from .tables import AssemblyTables

__all__ = ['AssemblyContext', 'build_classifier', 'check_assembly_options', 'DEFAULT_OPTIONS', 'ASSEMBLY_KEYS']

#: ``cfg.assembly`` defaults: the stem, how stitches are initialised, on how many target images.
DEFAULT_OPTIONS = dict(stem='source', stitch_init='lstsq', stitch_samples=64)
#: every key ``cfg.assembly`` may hold
ASSEMBLY_KEYS = tuple(DEFAULT_OPTIONS)
_CHOICES = dict(stem=('source', 'resnet'), stitch_init=('lstsq', 'random'))


def check_assembly_options(options):
    """``cfg.assembly`` merged with the defaults; one line for an unknown key or a bad value."""
    import difflib
    opts = dict(DEFAULT_OPTIONS)
    for key, value in to_plain(options or {}).items():
        if key not in ASSEMBLY_KEYS:
            close = difflib.get_close_matches(key, ASSEMBLY_KEYS, n=1)
            raise ConfigError(f"assembly has no option {key!r}{f' (did you mean {close[0]}?)' if close else ''}; "
                              f'its options: {", ".join(ASSEMBLY_KEYS)}')
        opts[key] = value
    for key, choices in _CHOICES.items():
        if opts[key] not in choices:
            raise ConfigError(f'assembly.{key} must be one of {", ".join(map(repr, choices))}, got {opts[key]!r}')
    n = opts['stitch_samples']
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f'assembly.stitch_samples must be an integer >= 1, got {n!r}')
    return opts


def build_classifier(blocks, zoo, model_cfg, stitch_init='lstsq', stem='source', features=None,
                     frozen_blocks=False):
    """The classifier of ``model_cfg`` on ``blocks`` (sharing the zoo's weights), stitches fitted.

    The backbone is built once, from the :class:`~dery.zoo.ZooCache`
    ``zoo``, and handed to the classifier as a module (mmpretrain's
    ``ImageClassifier`` takes a built backbone). ``features`` (name ->
    :class:`~dery.zoo.NodeFeatures`): fit the stitches by least squares when
    ``stitch_init='lstsq'``. Returns ``(model, fit errors or None)``.
    """
    backbone = ReassembledBackbone(blocks, zoo=zoo, stem=stem, stitch_init=stitch_init,
                                   frozen_blocks=frozen_blocks)
    model_cfg = dict(model_cfg)
    with DefaultScope.overwrite_default_scope('dery'):
        model = MODELS.build(dict(type=model_cfg.get('type', 'ImageClassifier'), backbone=backbone,
                                  neck=model_cfg.get('neck'),
                                  head=dict(model_cfg['head'], in_channels=backbone.out_specs[-1].channels),
                                  data_preprocessor=None))
    errors = None
    if stitch_init == 'lstsq' and features is not None:
        errors = backbone.fit_stitches(zoo, None, features=features)
    return model, errors


class AssemblyContext:
    """Everything a solver run needs: the problem (measured tables) and the proxy score function.

    Built once per config; ``score_fn(candidate_ids)`` builds the candidate
    network from the zoo's weights, fits its stitches and scores it with the
    whole-model proxy on seeded target batches. Benchmarks run several solvers
    on one context.

    Args:
        cfg (Config): the DeRy config (``target``, ``proxy``, ``constraints``,
            ``assembly``, ``model``).
        zoo (ZooCache): the built zoo.
        part (Partition): the stage-2 record.
    """

    def __init__(self, cfg, zoo, part):
        self.cfg, self.zoo, self.part = cfg, zoo, part
        self.opts = check_assembly_options(cfg.get('assembly'))
        self.input_size = zoo.input_size
        self.model_cfg = to_plain(cfg.model)
        self.proxy_cfg = to_plain(cfg.proxy)
        self.proxy = PROXIES.build(self.proxy_cfg)
        target = to_plain(cfg.target)
        dataset = DATASETS.build(target['dataset'])
        preprocess = target.get('data_preprocessor') or to_plain(cfg.get('data_preprocessor'))
        if preprocess is not None:
            preprocess = dict(preprocess)
            preprocess.setdefault('type', 'ClsDataPreprocessor')
        p = self.proxy
        self.batches = sample_batches(dataset, p.num_batches, p.batch_size, p.seed, preprocess=preprocess)
        images = torch.cat([b[0] for b in self.batches])
        self.tables = AssemblyTables(part, zoo, self.model_cfg)
        self.scores = naswot_block_scores(part, zoo, images, seed=p.seed)
        self.problem = self.tables.problem(cfg.constraints, self.scores)
        self.features = capture_node_features(zoo, list(part.models), images[:int(self.opts['stitch_samples'])]) \
            if self.opts['stitch_init'] == 'lstsq' else None

    def blocks(self, ids):
        return self.tables.blocks(ids)

    def build(self, ids):
        """``(model, fit errors)`` of the candidate ``ids``."""
        torch.manual_seed(self.proxy.seed)  # a random stitch init is part of the candidate
        return build_classifier(self.blocks(ids), self.zoo, self.model_cfg, self.opts['stitch_init'],
                                self.opts['stem'], self.features)

    def score_fn(self, ids):
        model, _ = self.build(ids)
        return self.proxy.score(model, self.batches)
