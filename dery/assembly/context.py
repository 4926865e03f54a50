"""``AssemblyContext``: everything a solver run needs, and the builder of candidate networks."""
import math
import time
import zlib

import torch
from mmengine.registry import DefaultScope

from dery.errors import ConfigError
from dery.models import ReassembledBackbone, StitchLayer, normalize_stem
from dery.models.backbone import RESOLUTIONS
from dery.proxies import sample_batches
from dery.registry import DATASETS, MODELS, PROXIES
from dery.solvers import normalize_constraints
from dery.utils import get_logger, to_plain
from dery.utils.memory import trim_heap
from dery.utils.progress import Progress
from .features import FeatureStore
from .surrogate import NodeKernels, block_scores
from .tables import AssemblyTables

__all__ = ['AssemblyContext', 'build_classifier', 'check_assembly_options', 'DEFAULT_OPTIONS', 'ASSEMBLY_KEYS',
           'NETWORK_KEYS', 'is_fixed', 'network_options']

#: ``cfg.assembly`` defaults: the stem, how stitches are initialised (on how many target images),
#: the resolution schedule, the stitch form and whether consecutive cuts of one model get a stitch.
DEFAULT_OPTIONS = dict(stem='source', stitch_init='lstsq', stitch_samples=64, resolution='native',
                       stitch=dict(type='StitchLayer'), stitch_consecutive=False)
#: every key ``cfg.assembly`` may hold; ``blocks``: a fixed assembly (no partition, no search)
ASSEMBLY_KEYS = tuple(DEFAULT_OPTIONS) + ('blocks', )
#: what the built network depends on (``ReassembledBackbone`` arguments)
NETWORK_KEYS = ('stem', 'resolution', 'stitch', 'stitch_consecutive')
_CHOICES = dict(stitch_init=('lstsq', 'random'), resolution=RESOLUTIONS)
_FIXED_BLOCK_KEYS = ('model', 'start', 'end', 'stride')


def check_assembly_options(options):
    """``cfg.assembly`` merged with the defaults; one line for an unknown key or a bad value.

    ``stem`` comes back normalised (``dict(type='source')`` or
    ``dict(type='resnet', channels=C)``), ``blocks`` as a list of plain dicts
    (absent: the solver chooses).
    """
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
    try:
        opts['stem'] = normalize_stem(opts['stem'])
    except ConfigError as e:
        raise ConfigError(f'assembly.{e}') from None
    if not isinstance(opts['stitch_consecutive'], bool):
        raise ConfigError(f"assembly.stitch_consecutive must be True or False, got {opts['stitch_consecutive']!r}")
    stitch = opts['stitch']
    if isinstance(stitch, str):
        stitch = dict(type=stitch)
    if not isinstance(stitch, dict) or 'type' not in stitch:
        raise ConfigError(f"assembly.stitch must be dict(type='StitchLayer' | 'NormActStitch', ...), got {stitch!r}")
    cls = MODELS.get(stitch['type']) if isinstance(stitch['type'], str) else None
    if not (isinstance(cls, type) and issubclass(cls, StitchLayer)):
        raise ConfigError(f"assembly.stitch type {stitch['type']!r} is not a stitch form registered in MODELS "
                          "('StitchLayer': affine, the default; 'NormActStitch': the original code's)")
    opts['stitch'] = dict(stitch)
    if 'blocks' in opts:
        opts['blocks'] = _check_fixed_blocks(opts['blocks'], opts['resolution'])
    return opts


def _check_fixed_blocks(blocks, resolution):
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ConfigError('assembly.blocks must be a non-empty list of dict(model=..., start=..., end=...) '
                          '(a fixed assembly), got {!r}'.format(blocks))
    out = []
    for k, b in enumerate(blocks):
        if not isinstance(b, dict) or not all(key in b for key in ('model', 'start', 'end')):
            raise ConfigError(f'assembly.blocks[{k}] must be dict(model=..., start=..., end=...[, stride=s]), '
                              f'got {b!r}')
        extra = sorted(set(b) - set(_FIXED_BLOCK_KEYS))
        if extra:
            raise ConfigError(f'assembly.blocks[{k}] has unknown keys {extra}; a block is dict(model, start, end'
                              "[, stride: the stitch in front of it, under resolution='chain'])")
        stride = b.get('stride')
        if stride is not None:
            if resolution != 'chain':
                raise ConfigError(f"assembly.blocks[{k}].stride applies to resolution='chain' only")
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise ConfigError(f'assembly.blocks[{k}].stride must be an integer >= 1, got {stride!r}')
        out.append(dict(b))
    return out


def _block_nodes(card, block):
    return card.nodes[card.index(block.start):card.index(block.end) + 1]


def is_fixed(cfg):
    """Whether the config gives its assembly (``assembly.blocks``): no partition, no search."""
    return bool((cfg.get('assembly') or {}).get('blocks'))


def network_options(opts):
    """The ``ReassembledBackbone`` keyword arguments among checked ``opts``."""
    return {k: opts[k] for k in NETWORK_KEYS}


def build_classifier(blocks, zoo, model_cfg, stitch_init='lstsq', stem='source', features=None,
                     frozen_blocks=False, **network):
    """The classifier of ``model_cfg`` on ``blocks`` (sharing the zoo's weights), stitches fitted.

    The backbone is built once, from the :class:`~dery.zoo.ZooCache`
    ``zoo``, and handed to the classifier as a module (mmpretrain's
    ``ImageClassifier`` takes a built backbone). ``features`` (name ->
    :class:`~dery.zoo.NodeFeatures`): fit the stitches by least squares when
    ``stitch_init='lstsq'``. ``network``: the other ``ReassembledBackbone``
    arguments (``resolution``, ``stitch``, ``stitch_consecutive``). Returns
    ``(model, fit errors or None)``.
    """
    backbone = ReassembledBackbone(blocks, zoo=zoo, stem=stem, stitch_init=stitch_init,
                                   frozen_blocks=frozen_blocks, **network)
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

    Memory: one pass over the zoo, one model at a time (built from the
    :class:`~dery.zoo.ZooCache` when need be, released after): its
    :class:`~dery.zoo.ZooCard` (nodes, layouts, params and FLOPs: all the cost
    tables read), the surrogate scores and the stitch features (the outputs of
    the partition's block ends on ``stitch_samples`` target images, on disk:
    :class:`~dery.assembly.features.FeatureStore`) all come from one forward
    pass over the target images. A candidate network then holds only the zoo
    models its blocks come from (the models of the previous candidate are
    released). Under ``assembly.resolution='chain'`` the cost tables run cuts
    of every model at other sizes, so the models stay built; likewise when the
    zoo says ``keep_built``.

    Args:
        cfg (Config): the DeRy config (``target``, ``proxy``, ``constraints``,
            ``assembly``, ``model``).
        zoo (ZooCache): the zoo.
        part (Partition): the stage-2 record.
        progress (bool): rich progress bars (the zoo pass).
        work_dir (str | None): where the stitch features go (a temporary folder
            in it, removed afterwards; None: the system's temporary folder).
    """

    def __init__(self, cfg, zoo, part, progress=False, work_dir=None):
        self.cfg, self.zoo, self.part = cfg, zoo, part
        self.work_dir = work_dir or cfg.get('work_dir') or None
        self.opts = check_assembly_options(cfg.get('assembly'))
        self.input_size = zoo.input_size
        self.model_cfg = to_plain(cfg.model)
        self.proxy_cfg = to_plain(cfg.proxy)
        self.proxy = PROXIES.build(self.proxy_cfg)
        self.times = {}
        self.budget = normalize_constraints(cfg.get('constraints'))
        #: the blocks over the budget on their own (no surrogate score: :meth:`_fits_alone`)
        self.unscored = []
        t0 = time.perf_counter()
        target = to_plain(cfg.target)
        dataset = DATASETS.build(target['dataset'])
        preprocess = target.get('data_preprocessor') or to_plain(cfg.get('data_preprocessor'))
        if preprocess is not None:
            preprocess = dict(preprocess)
            preprocess.setdefault('type', 'ClsDataPreprocessor')
        p = self.proxy
        self.batches = sample_batches(dataset, p.num_batches, p.batch_size, p.seed, preprocess=preprocess)
        images = torch.cat([b[0] for b in self.batches])
        self.times['target_data_seconds'] = time.perf_counter() - t0
        self._ours = set()  # models this context built (and releases)
        self.release = (self.opts['resolution'] != 'chain' and hasattr(zoo, 'release')
                        and not getattr(zoo, 'keep_built', False))
        with Progress(progress) as prog:
            self.scores, self.features = self._zoo_pass(images, p.seed, prog)
        t1 = time.perf_counter()
        self.tables = AssemblyTables(part, zoo, self.model_cfg, self.opts)
        self.problem = self.tables.problem(cfg.constraints, self.scores)
        self.times['tables_seconds'] = time.perf_counter() - t1

    def _zoo_pass(self, images, seed, prog):
        """Every model once: card, surrogate scores (NASWOT kernels of each node, made as the node
        outputs appear) and, from the same forward pass, the stitch features; then released.
        Timed: ``zoo_pass_build`` (building the model, its card: one FLOP trace), ``zoo_pass_forward``."""
        zoo, part = self.zoo, self.part
        lstsq = self.opts['stitch_init'] == 'lstsq'
        n = int(self.opts['stitch_samples'])
        g = torch.Generator().manual_seed(seed)  # the unit draws of the surrogate, in model and node order
        store = FeatureStore(self.work_dir) if lstsq else None
        scores, no_forward = {}, []
        build_s = forward_s = 0.0
        task = prog.add('assemble: zoo pass (surrogate scores, stitch features)', len(part.models))
        for name, mb in part.models.items():
            t0 = time.perf_counter()
            prog.update(task, description=f'assemble: zoo pass (building {name})')
            if hasattr(zoo, 'is_built') and not zoo.is_built(name):
                self._ours.add(name)
            zm = zoo[name]
            if list(zm.nodes) != list(mb.nodes):
                from dery.partition.record import PartitionError
                raise PartitionError(f"partition.json: the nodes of '{name}' differ from the zoo model's; "
                                     'rerun tools/partition.py')
            card = zoo.card(name) if hasattr(zoo, 'card') else zm
            t1 = time.perf_counter()
            prog.update(task, description=f'assemble: zoo pass ({name})')
            # Blocks over the budget on their own are in no feasible assembly: their nodes get no kernels,
            # their ends no stitch features unless the next block needs them, and the forward stops after
            # the last node still needed (none: no forward at all). Every node still takes its unit draws,
            # so the scores of the other blocks and models are the ones a full pass gives.
            usable = {j for j, b in enumerate(mb.blocks) if self._fits_alone(card, b)}
            self.unscored.extend(f'{name}:{j}' for j in range(len(mb.blocks)) if j not in usable)
            scored = {x for j in usable for x in _block_nodes(card, mb.blocks[j])}
            ends = {b.end for j, b in enumerate(mb.blocks[:-1]) if j in usable or j + 1 in usable} if lstsq else set()
            kernels, kept = NodeKernels(g), {node: [] for node in ends}
            for x in card.nodes:
                kernels.draw(x, math.prod(card.shapes(x)[1]))
            wanted = [x for x in card.nodes if x in scored or x in ends]
            if not wanted:
                no_forward.append(name)
            rows = [0]

            def on_output(node, out, kernels=kernels, kept=kept, rows=rows, scored=scored):
                if node in scored:
                    kernels.add(node, out)
                if node in kept and rows[0] < n:
                    kept[node].append(out[:n - rows[0]])
            # in batches of 16 (as the stitch features always were; outputs do not depend on the batch);
            # a model whose forward draws random numbers (MAE's masking) draws the same whatever ran before
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(name.encode()))
                for chunk in images.split(16) if wanted else ():
                    zm.node_outputs(chunk, nodes=wanted, on_output=on_output)
                    rows[0] += len(chunk)
                    trim_heap()  # the batch's freed activations leave the process (dery/utils/memory.py)
            if lstsq:
                feats = store.new(name, card.nodes)
                for node, parts in kept.items():
                    feats.put(node, torch.cat(parts))
            scores.update(block_scores(name, card, mb.blocks,
                                       [kernels.kernel(x) if x in scored else None for x in card.nodes], only=usable))
            del zm, kernels, kept
            self._release(name)
            build_s += t1 - t0
            forward_s += time.perf_counter() - t1
            prog.advance(task)
        self.times.update(zoo_pass_build_seconds=build_s, zoo_pass_forward_seconds=forward_s)
        if self.unscored:
            get_logger().info(f'assemble: {len(self.unscored)} of {len(scores) + len(self.unscored)} blocks are over '
                              f'the budget on their own (no surrogate score); {len(no_forward)} models ran no forward'
                              + (f' ({", ".join(no_forward)})' if no_forward else ''))
        return scores, store

    def _fits_alone(self, card, block):
        """False when ``block`` alone is over the budget's max params (or max FLOPs, at the native
        resolution: under ``'chain'`` a block's FLOPs depend on the size it runs at). Every other part of
        an assembly (blocks, stitches, stem, head) adds to its cost, so such a block is in none."""
        hi_params, hi_flops = self.budget['params'][1], self.budget['flops'][1]
        if hi_params is not None and card.params(block.start, block.end) > hi_params:
            return False
        return not (hi_flops is not None and self.opts['resolution'] != 'chain'
                    and card.flops(block.start, block.end) > hi_flops)

    def _release(self, name):
        if self.release and name in self._ours:
            self._ours.discard(name)
            self.zoo.release(name)

    def hold(self, names):
        """Keep the models ``names`` (a candidate's) built, release the others this context built."""
        for name in list(self._ours):
            if name not in names:
                self._release(name)
        if hasattr(self.zoo, 'is_built'):
            self._ours.update(n for n in names if not self.zoo.is_built(n))

    def close(self):
        """Release the models this context built and remove the stitch features."""
        self.hold(())
        if self.features is not None:
            self.features.close()

    def blocks(self, ids):
        return self.tables.blocks(ids)

    def build(self, ids):
        """``(model, fit errors)`` of the candidate ``ids``."""
        over = sorted(set(self.unscored).intersection(ids))
        if over:  # a solver (e.g. a user's) asked for an assembly over the budget: the zoo pass kept nothing for it
            raise ConfigError(f'assembly {list(ids)}: {over} alone exceed the budget {to_plain(self.cfg.constraints)}, '
                              'so no assembly within it has them; a solver must only score feasible assemblies '
                              '(problem.is_feasible)')
        self.hold({self.tables.by_id[i].model for i in ids})
        torch.manual_seed(self.proxy.seed)  # a random stitch init is part of the candidate
        net = network_options(self.opts)
        return build_classifier(self.blocks(ids), self.zoo, self.model_cfg, self.opts['stitch_init'],
                                features=self.features, **net)

    def score_fn(self, ids):
        """The whole-model proxy score of the candidate ``ids``. Timed: ``candidate_build`` (the zoo models
        it needs, the network, the stitch fits) and ``proxy_score``."""
        t0 = time.perf_counter()
        model, _ = self.build(ids)
        t1 = time.perf_counter()
        score = self.proxy.score(model, self.batches)
        del model
        trim_heap()
        t2 = time.perf_counter()
        self.times['candidate_build_seconds'] = self.times.get('candidate_build_seconds', 0.0) + t1 - t0
        self.times['proxy_score_seconds'] = self.times.get('proxy_score_seconds', 0.0) + t2 - t1
        return score
