"""Proxy calibration: how well does each training-free proxy rank candidate networks by what they reach
after fine-tuning?

:class:`Calibration` samples N feasible assemblies of a DeRy config's
partition (the solver's ranked top-M first, then seeded random ones), builds
each as the assembly stage would (zoo blocks, fitted stitches) and scores it
with every proxy on the same target batches, fine-tunes each with the config's
schedule (runs keyed and cached: :mod:`.runs`), then measures each proxy's
Kendall's tau and Spearman's rho against the fine-tuned top-1, with bootstrap
intervals (:mod:`.stats`), and writes ``WORK_DIR/calibration/``:
``calibration.json``, ``calibration.md`` and a scatter PNG per proxy
(:mod:`.report`). Two phases, so that a caller with its own worker pool (the
demo) can train the runs::

    calib = Calibration(cfg, work_dir, zoo, part, assembly)
    calib.prepare()                      # samples, init weights, proxy scores, calib.runs
    results = serial_executor(calib.runs)   # or any executor: {run name: result with 'top1'}
    record = calib.finish(results)       # tables, plots, calibration.json
"""
import copy
import dataclasses
import hashlib
import os
import os.path as osp
import re
import time

from dery.errors import ConfigError
from dery.utils import atomic_save_json, get_logger, load_json, to_plain
from .runs import make_run, run_key
from .sampling import sample_assemblies
from .stats import rank_agreement

__all__ = ['Calibration', 'DEFAULT_OPTIONS', 'calibration_options', 'proxy_configs', 'weights_digest',
           'sample_name', 'reset_head']

#: ``cfg.calibration`` defaults
DEFAULT_OPTIONS = dict(num_samples=12, seed=0, seeds=[0], proxies=None, max_iters=None, num_bootstrap=2000,
                       level=0.95, include_top_m=True)
#: proxy options shared with the config's proxy (the others keep their own defaults)
SHARED_PROXY_KEYS = ('num_batches', 'batch_size', 'seed', 'device')
#: format of calibration.json
FORMAT = 1
#: how the proxy scores are made (in their cache key): 2 = the head re-initialised (:func:`reset_head`)
SCORE_FORMAT = 2


def reset_head(model, seed):
    """Re-initialise the classifier head of a built candidate from ``seed`` alone.

    ``AssemblyContext.build`` seeds the global RNG before it builds, but building zoo models that are not
    built yet (a context releases the models of the previous candidate) draws from it too, so the head's
    random init depends on which network was built before. The gradient proxies (SynFlow, SNIP, GradNorm,
    Fisher, Jacov) read the logits, hence the head: without this a sample's scores would depend on its
    place in the order. Fine-tuning never sees this head (the runs load the backbone only).
    """
    import torch
    head = getattr(model, 'head', None)
    if head is None:
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in head.modules():
            if hasattr(m, 'reset_parameters'):
                m.reset_parameters()
        if hasattr(head, 'init_weights'):
            head.init_weights()


def calibration_options(cfg, **overrides):
    """``cfg.calibration`` merged with the defaults and ``overrides`` (None values left out); one line
    for an unknown key or a bad value."""
    import difflib
    opts = dict(DEFAULT_OPTIONS)
    given = dict(to_plain(cfg.get('calibration') or {}))
    given.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in given.items():
        if key not in DEFAULT_OPTIONS:
            close = difflib.get_close_matches(key, list(DEFAULT_OPTIONS), n=1)
            raise ConfigError(f"calibration has no option {key!r}{f' (did you mean {close[0]}?)' if close else ''}; "
                              f'its options: {", ".join(DEFAULT_OPTIONS)}')
        opts[key] = value
    n = opts['num_samples']
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f'calibration.num_samples must be an integer >= 2, got {n!r}')
    seeds = opts['seeds']
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f'calibration.seeds must be a non-empty list of integers, got {opts["seeds"]!r}')
    opts['seeds'] = list(seeds)
    mi = opts['max_iters']
    if mi is not None and (isinstance(mi, bool) or not isinstance(mi, int) or mi < 1):
        raise ConfigError(f'calibration.max_iters must be None or an integer >= 1, got {mi!r}')
    if opts['proxies'] is not None:
        names = opts['proxies']
        opts['proxies'] = [names] if isinstance(names, (str, dict)) else list(names)
    return opts


def proxy_configs(cfg, proxies=None):
    """``{label: proxy config}``: every registered proxy (or the ``proxies`` named: type names or
    configs), each with the config's shared proxy settings (batches, batch size, seed); the config's
    own proxy type with all its options."""
    from dery.registry import PROXIES
    PROXIES.import_from_location()
    own = dict(to_plain(cfg.proxy))
    shared = {k: own[k] for k in SHARED_PROXY_KEYS if k in own}
    if proxies is None:
        proxies = sorted(PROXIES.module_dict)
    out = {}
    for p in proxies:
        pc = dict(type=p) if isinstance(p, str) else dict(to_plain(p))
        name = pc.get('type')
        if name not in PROXIES.module_dict:
            raise ConfigError(f'calibration.proxies: no proxy {name!r} in PROXIES '
                              f'({", ".join(sorted(PROXIES.module_dict))})')
        label = pc.pop('label', None) or name
        if label in out:
            raise ConfigError(f'calibration.proxies: {label!r} twice; give the variants a `label`')
        full = dict(own) if (name == own.get('type') and len(pc) == 1) else dict(shared, **pc)
        full['type'] = name
        out[label] = full
    return out


def weights_digest(state_dict):
    """A hash of a state dict's keys, dtypes, shapes and values (independent of how it is saved)."""
    import torch
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k].detach().cpu().contiguous()
        h.update(f'{k}|{v.dtype}|{tuple(v.shape)}|'.encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


def sample_name(problem, ids):
    """A file-safe name of an assembly: ``<model>.<position>`` per block, joined by ``-``."""
    parts = []
    for cid in ids:
        c = problem.by_id[cid]
        parts.append(f'{c.model}.{c.position}')
    return re.sub(r'[^A-Za-z0-9._-]+', '_', '-'.join(parts))


def _rescale_schedule(cfg, max_iters):
    """An iteration-based schedule shortened (or lengthened) to ``max_iters``: every scheduler's
    ``begin``/``end``/``T_max`` scaled; one validation at the end."""
    train_cfg = cfg.get('train_cfg') or {}
    old = train_cfg.get('max_iters')
    if train_cfg.get('by_epoch', False) or not old:
        raise ConfigError('calibration.max_iters needs an iteration-based schedule (train_cfg.max_iters)')
    f = max_iters / float(old)
    cfg.train_cfg = dict(train_cfg, max_iters=int(max_iters), val_interval=int(max_iters))
    sched = cfg.get('param_scheduler') or []
    sched = [sched] if isinstance(sched, dict) else list(sched)
    out = []
    for s in sched:
        s = dict(s)
        for k in ('begin', 'end', 'T_max'):
            if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool):
                s[k] = max(1 if k != 'begin' else 0, int(round(s[k] * f)))
        out.append(s)
    cfg.param_scheduler = out


@dataclasses.dataclass
class Sample:
    """One sampled assembly."""
    name: str
    ids: tuple
    source: str            # 'solver' (the solver's answer), 'top-M' (ranked by the solver), 'random'
    blocks: list           # [dict(model, start, end, set, position, family)]
    families: list         # distinct families, in stage order
    params: int
    flops: int
    ilp_rank: int = None   # position in the solver's ranking (assembly.json candidates), None: not ranked
    scores: dict = dataclasses.field(default_factory=dict)    # proxy label -> score (None: failed)
    errors: dict = dataclasses.field(default_factory=dict)    # proxy label -> error text
    init: str = None       # the init weights file
    init_digest: str = None
    out_channels: int = None  # of the last block (the head's input)

    @property
    def cross_family(self):
        return len(self.families) > 1

    @property
    def models(self):
        return list(dict.fromkeys(b['model'] for b in self.blocks))


class Calibration:
    """The calibration of a DeRy config's proxies (see the module docstring).

    Args:
        cfg (Config): the DeRy config (``proxy``, ``target``, ``constraints``, ``model``, the schedule;
            ``calibration`` for the options of :data:`DEFAULT_OPTIONS`).
        work_dir (str): the config's work dir (``partition.json``, ``assembly.json``); outputs go to
            ``WORK_DIR/calibration``.
        zoo (ZooCache): the built zoo.
        part (Partition): the stage-2 record.
        assembly (Assembly): the stage-3 record (its ranked candidates are sampled first).
        task (str): a name for the tables (default: the target data set's type).
        **options: override ``cfg.calibration``.
    """

    def __init__(self, cfg, work_dir, zoo, part, assembly, task=None, **options):
        self.cfg, self.zoo, self.part, self.assembly = cfg, zoo, part, assembly
        self.work_dir = osp.abspath(work_dir)
        self.out_dir = osp.join(self.work_dir, 'calibration')
        self.opts = calibration_options(cfg, **options)
        self.proxy_cfgs = proxy_configs(cfg, self.opts['proxies'])
        target = to_plain(cfg.target)
        self.task = task or (target.get('dataset') or {}).get('type', 'target')
        self.samples, self.runs = [], []
        self.proxy_seed = int(to_plain(cfg.proxy).get('seed', 0))
        self.proxy_seconds = {}
        self.ctx = None
        self.logger = get_logger()

    # ------------------------------------------------------------------ phase 1
    def prepare(self, log=None):
        """Sample, build, save the init weights, score with every proxy; fill ``samples`` and ``runs``."""
        from dery.assembly import AssemblyContext
        log = log or self.logger.info
        t0 = time.perf_counter()
        os.makedirs(osp.join(self.out_dir, 'init'), exist_ok=True)
        # zoo models are built in eval mode; a stage run before may have left shared modules in train mode
        # (dery.models.model_complexity on a built candidate does), which changes the features the stitches
        # are fitted on: the candidates are built from the zoo as it is built
        for name in self.part.models:
            if not hasattr(self.zoo, 'is_built') or self.zoo.is_built(name):
                self.zoo[name].model.eval()
        self.ctx = ctx = AssemblyContext(self.cfg, self.zoo, self.part)
        try:
            self._prepare(ctx, log, t0)
        finally:
            if hasattr(ctx, 'close'):  # built models released, temporary stitch features removed
                ctx.close()
        return self

    def _prepare(self, ctx, log, t0):
        import torch

        from dery.registry import PROXIES
        problem = ctx.problem
        ranked = [tuple(c['candidate_ids']) for c in self.assembly.candidates] if self.opts['include_top_m'] else []
        ranked = [ids for ids in ranked if all(i in problem.by_id for i in ids)]
        chosen = ranked[0] if ranked else None
        drawn = sample_assemblies(problem, self.opts['num_samples'], seed=self.opts['seed'], include=ranked)
        if len(drawn) < 2:
            raise ConfigError(f'calibration: the budget admits {len(drawn)} assembly; a rank correlation needs '
                              'at least 2 (widen the constraints)')
        scores_path = osp.join(self.out_dir, 'scores.json')
        cache = load_json(scores_path, 'proxy scores') if osp.isfile(scores_path) else {}
        proxies = {label: PROXIES.build(pc) for label, pc in self.proxy_cfgs.items()}
        seconds = {label: [] for label in proxies}
        for k, (ids, how) in enumerate(drawn):
            name = sample_name(problem, ids)
            cands = [problem.by_id[i] for i in ids]
            blocks = [dict(model=c.model, start=c.start, end=c.end, set=c.set, position=c.position,
                           family=self.zoo.entries[c.model].family) for c in cands]
            params, flops = problem.cost(ids)
            source = 'solver' if ids == chosen else ('top-M' if how == 'include' else 'random')
            s = Sample(name=name, ids=tuple(ids), source=source, blocks=blocks,
                       families=list(dict.fromkeys(b['family'] for b in blocks)), params=int(params),
                       flops=int(flops), ilp_rank=ranked.index(ids) if ids in ranked else None)
            model, _ = ctx.build(ids)
            reset_head(model, self.proxy_seed)
            s.out_channels = int(model.backbone.out_specs[-1].channels)
            state = model.state_dict()
            # the runs load the backbone only (init_cfg prefix 'backbone.'): its weights key them
            s.init_digest = weights_digest({k: v for k, v in state.items() if k.startswith('backbone.')})
            s.init = osp.join(self.out_dir, 'init', f'{name}.pth')
            if not osp.isfile(s.init) or cache.get(name, {}).get('init_digest') != s.init_digest:
                tmp = f'{s.init}.{os.getpid()}.tmp'
                torch.save(dict(state_dict=state, meta=dict(dery='calibration_init', ids=list(ids),
                                                            digest=s.init_digest)), tmp)
                os.replace(tmp, s.init)
            entry = cache.get(name) if cache.get(name, {}).get('init_digest') == s.init_digest else None
            entry = entry or dict(init_digest=s.init_digest, scores={})
            for label, proxy in proxies.items():
                pkey = run_key(dict(proxy=self.proxy_cfgs[label], batches=self._batches_key(), format=SCORE_FORMAT))
                hit = entry['scores'].get(label)
                if hit is not None and hit.get('key') == pkey:
                    s.scores[label], err = hit['score'], hit.get('error')
                    if err:
                        s.errors[label] = err
                    continue
                ts = time.perf_counter()
                try:
                    value, err = float(proxy.score(model, ctx.batches)), None
                except (ValueError, RuntimeError) as e:  # a proxy undefined on this network
                    value, err = None, f'{type(e).__name__}: {e}'
                seconds[label].append(time.perf_counter() - ts)
                s.scores[label] = value
                if err:
                    s.errors[label] = err
                entry['scores'][label] = dict(key=pkey, score=value, error=err,
                                              seconds=round(seconds[label][-1], 4))
            for label in proxies:
                if not seconds[label] and entry['scores'].get(label, {}).get('seconds') is not None:
                    seconds[label].append(entry['scores'][label]['seconds'])
            cache[name] = entry
            del model
            self.samples.append(s)
        atomic_save_json(cache, scores_path)
        self.proxy_seconds = {label: (sum(v) / len(v) if v else None) for label, v in seconds.items()}
        self.runs = [self.run(s, seed) for s in self.samples for seed in self.opts['seeds']]
        n_cross = sum(s.cross_family for s in self.samples)
        n_ranked = sum(s.source != 'random' for s in self.samples)
        log(f'calibration ({self.task}): {len(self.samples)} assemblies ({n_ranked} '
            f'ranked by the solver, {n_cross} across families) scored by {len(proxies)} proxies in '
            f'{time.perf_counter() - t0:.1f} s; {len(self.runs)} fine-tunes')
        return self

    def _batches_key(self):
        p = to_plain(self.cfg.proxy)
        target = to_plain(self.cfg.target)
        return dict(target=target, batches={k: p.get(k) for k in ('num_batches', 'batch_size', 'seed')})

    def train_config(self, sample, seed):
        """The training config of ``sample`` (the config's model, data and schedule; its blocks, initialised
        from ``sample.init``) with ``randomness.seed = seed``."""
        from mmengine.config import Config

        from dery.assembly import AssemblyBlock, use_assembly
        cfg = Config(copy.deepcopy(to_plain(self.cfg)))
        blocks = [AssemblyBlock(model=b['model'], start=b['start'], end=b['end'], set=b['set'],
                                position=b['position'], family=b['family']) for b in sample.blocks]
        record = dataclasses.replace(
            self.assembly, blocks=blocks, stitches=[None] * (len(blocks) - 1),
            zoo={m: self.zoo.entries[m].to_dict() for m in sample.models},
            out_channels=sample.out_channels, params=sample.params, flops=sample.flops,
            candidates=[], surrogate={})
        use_assembly(cfg, record, None)
        cfg.model.backbone['init_cfg'] = dict(type='Pretrained', checkpoint=sample.init, prefix='backbone.')
        cfg.randomness = dict(seed=int(seed), deterministic=False)
        if self.opts['max_iters'] is not None:
            _rescale_schedule(cfg, self.opts['max_iters'])
        elif (cfg.get('train_cfg') or {}).get('max_iters'):  # one validation, at the end (no curves needed)
            cfg.train_cfg = dict(cfg.train_cfg, val_interval=int(cfg.train_cfg.max_iters))
        return cfg

    def run(self, sample, seed):
        """The run record of ``sample`` fine-tuned with ``seed`` (in ``WORK_DIR/calibration/runs``)."""
        name = f'{sample.name}_s{seed}'
        return make_run(name, self.train_config(sample, seed), osp.join(self.out_dir, 'runs', name),
                        dict(kind='calibration', init=sample.init_digest), seed=seed, kind='calibration',
                        desc=f'calibration {self.task}: {sample.name}, seed {seed}', sample=sample.name)

    def runs_of(self, ids):
        """The runs of the sample ``ids`` (e.g. to fill them from runs made elsewhere)."""
        names = {s.name for s in self.samples if s.ids == tuple(ids)}
        return [r for r in self.runs if r['sample'] in names]

    # ------------------------------------------------------------------ phase 2
    def finish(self, results, plots=True):
        """Rank agreement per proxy from ``results`` (``{run name: dict(top1=...)}``); writes
        ``calibration.json`` and ``calibration.md`` (and the scatter PNGs); returns the record."""
        from .report import plot_scatters, write_markdown
        missing = [r['name'] for r in self.runs if r['name'] not in results]
        if missing:
            raise ConfigError(f'calibration: no result for {len(missing)} run(s), e.g. {missing[:3]}')
        rows = []
        for s in self.samples:
            top1 = [float(results[r['name']]['top1']) for r in self.runs if r['sample'] == s.name]
            rows.append(dict(name=s.name, source=s.source, ilp_rank=s.ilp_rank, ids=list(s.ids), blocks=s.blocks,
                             families=s.families, cross_family=s.cross_family, params=s.params, flops=s.flops,
                             scores=s.scores, errors=s.errors, top1=top1,
                             top1_mean=sum(top1) / len(top1), init=osp.relpath(s.init, self.work_dir)))
        acc = [r['top1_mean'] for r in rows]
        ranked = [r for r in rows if r['source'] != 'random']
        best_ranked = max(ranked, key=lambda r: r['top1_mean']) if ranked else None
        table = {}
        for label in self.proxy_cfgs:
            scores = [r['scores'].get(label) for r in rows]
            agree = rank_agreement(scores, acc, self.opts['num_bootstrap'], self.opts['level'], self.opts['seed'])
            pick = None
            valid = [r for r in ranked if r['scores'].get(label) is not None]
            if valid:
                p = max(valid, key=lambda r: r['scores'][label])
                pick = dict(name=p['name'], top1=p['top1_mean'], regret=best_ranked['top1_mean'] - p['top1_mean'])
            within = rank_agreement([r['scores'].get(label) for r in ranked], [r['top1_mean'] for r in ranked],
                                    self.opts['num_bootstrap'], self.opts['level'], self.opts['seed'])
            table[label] = dict(agree, config=self.proxy_cfgs[label], seconds=self.proxy_seconds.get(label),
                                failed=sum(r['scores'].get(label) is None for r in rows), pick_top_m=pick,
                                top_m=dict(n=within['n'], tau=within['tau'], tau_ci=within['tau_ci']))
        record = dict(
            format=FORMAT, task=self.task, work_dir=self.work_dir, num_samples=len(rows),
            options={k: v for k, v in self.opts.items()}, proxy=to_plain(self.cfg.proxy),
            schedule=dict(max_iters=int(self.runs[0]['cfg']['train_cfg']['max_iters']),
                          seeds=list(self.opts['seeds'])),
            chosen=next((r['name'] for r in rows if r['source'] == 'solver'), None),
            best_ranked=None if best_ranked is None else best_ranked['name'],
            samples=rows, proxies=table,
            plots={label: f'scatter_{_file_label(label)}.png' for label in table} if plots else {},
            created=time.strftime('%Y-%m-%d %H:%M:%S'))
        if plots:
            plot_scatters(record, self.out_dir)
        atomic_save_json(record, osp.join(self.out_dir, 'calibration.json'))
        write_markdown(record, osp.join(self.out_dir, 'calibration.md'))
        return record


def _file_label(label):
    return re.sub(r'[^A-Za-z0-9._-]+', '_', str(label))
