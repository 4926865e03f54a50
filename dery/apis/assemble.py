"""Stage 3: from ``partition.json`` to a stitched network within the budget.

Candidates: block ``j`` of every zoo model is a candidate for stage position
``j`` (blocks keep their depth order, so position 0 starts at a model's first
node and its stem fits), with the equivalence set the partition gave it; the
solver picks one candidate per position and at most one per set.

Costs are measured, not estimated: block params and FLOPs come from the zoo
models (``mmengine.analysis``), every possible stitch is built and measured
(cached by shape), stem and head likewise, so the integer program counts the
built network's params and FLOPs exactly.

Surrogate score (the ILP's linear objective): for each block, the NASWOT
log-determinant of the binary activation-pattern kernel of the block's node
outputs inside its source model, on the target batches. NASWOT is not additive
over blocks, but a block whose units separate the target samples well keeps
doing so after stitching; the whole-model proxy re-ranks the ILP's top-M
solutions, which corrects the surrogate's error.
"""
import os
import os.path as osp
import time

import torch
import torch.nn as nn
from mmengine.registry import init_default_scope

from dery.models import ReassembledBackbone, StitchLayer, model_complexity
from dery.models.backbone import _to_nchw
from dery.proxies import sample_batches
from dery.registry import DATASETS, MODELS, PROXIES, SOLVERS
from dery.solvers.problem import AssemblyProblem, Candidate
from dery.utils import atomic_save_json, atomic_write, get_logger, load_json, record_timings
from dery.zoo.analysis import count_flops, count_params
from .common import _plain, as_config, build_zoo, work_dir_of, zoo_entries


class AssemblyError(ValueError):
    """partition.json / assembly.json do not fit the config's zoo."""


def check_partition_fits(part, zoo, entries):
    names = list(entries)
    if set(part.get('models', {})) != set(names):
        raise AssemblyError(
            f'partition.json was made from another zoo (models {sorted(part.get("models", {}))} vs the '
            f'config\'s {sorted(names)}); delete it or rerun tools/partition.py')
    k = part.get('num_sets')
    for name in names:
        info = part['models'][name]
        zm = zoo[name]
        if info.get('nodes') != zm.nodes:
            raise AssemblyError(f"partition.json: the nodes of '{name}' differ from the zoo model's; "
                                'rerun tools/partition.py')
        blocks = info.get('blocks', [])
        if len(blocks) != k:
            raise AssemblyError(f"partition.json: '{name}' has {len(blocks)} blocks, expected num_sets={k}")
        expect = 0
        for b in blocks:
            try:
                s, e = zm.nodes.index(b['start']), zm.nodes.index(b['end'])
            except (ValueError, KeyError):
                raise AssemblyError(f"partition.json: block {b} of '{name}' names unknown nodes") from None
            if s != expect or e < s or not (isinstance(b.get('set'), int) and 0 <= b['set'] < k):
                raise AssemblyError(f"partition.json: blocks of '{name}' are not contiguous, ordered "
                                    f'and covering with sets in 0..{k - 1} (at {b}); rerun tools/partition.py')
            expect = e + 1
        if expect != len(zm.nodes):
            raise AssemblyError(f"partition.json: blocks of '{name}' do not cover all its nodes")


def _channels(zm, node):
    shape = zm.shapes(node)[1]
    return shape[0] if zm.family == 'cnn' else shape[-1]


class _HeadProbe(nn.Module):
    """out-norm + neck + head of the built classifier, on a block's output."""

    def __init__(self, norm, neck, head, family, prefix):
        super().__init__()
        self.norm, self.neck, self.head = norm, neck, head
        self.family, self.prefix = family, prefix

    def forward(self, x):
        x = self.norm(x) if self.norm is not None else x
        feats = self.neck((_to_nchw(x, self.family, self.prefix), ))
        return self.head(feats)


class AssemblyTables:
    """Candidates and measured cost tables for the solver (stitches cached by shape)."""

    def __init__(self, part, zoo, model_cfg):
        self.part, self.zoo, self.model_cfg = part, zoo, model_cfg
        self.k = part['num_sets']
        self._stitch_cache, self._head_cache = {}, {}
        self.candidates = []
        for name, info in part['models'].items():
            zm = zoo[name]
            for j, b in enumerate(info['blocks']):
                s, e = zm.index(b['start']), zm.index(b['end'])
                self.candidates.append(Candidate(
                    id=f'{name}:{j}', model=name, start=b['start'], end=b['end'], set=b['set'], position=j,
                    params=zm.params(s, e), flops=zm.flops(s, e)))
        self.by_id = {c.id: c for c in self.candidates}

    def stitch_cost(self, a, b):
        za, zb = self.zoo[a.model], self.zoo[b.model]
        ea, sb = za.index(a.end), zb.index(b.start)
        if a.model == b.model and ea + 1 == sb:
            return 0, 0
        key = (za.family, tuple(za.shapes(ea)[1]), za.num_prefix_tokens, zb.family, tuple(zb.shapes(sb)[0]),
               zb.num_prefix_tokens)
        if key not in self._stitch_cache:
            st = StitchLayer(key[0], key[1], key[3], key[4], key[2], key[5], init='random')
            self._stitch_cache[key] = (count_params(st), count_flops(st, torch.zeros((1, ) + key[1])))
        return self._stitch_cache[key]

    def head_cost(self, c):
        zm = self.zoo[c.model]
        e = zm.index(c.end)
        out = tuple(zm.shapes(e)[1])
        key = (zm.family, out, zm.num_prefix_tokens)
        if key not in self._head_cache:
            ch = _channels(zm, e)
            norm = nn.LayerNorm(ch) if zm.family in ('vit', 'swin') else None
            neck = MODELS.build(dict(self.model_cfg.get('neck') or dict(type='GlobalAveragePooling')))
            head = MODELS.build(dict(self.model_cfg['head'], in_channels=ch))
            probe = _HeadProbe(norm, neck, head, zm.family, zm.num_prefix_tokens)
            self._head_cache[key] = (count_params(probe), count_flops(probe, torch.zeros((1, ) + out)))
        return self._head_cache[key]

    def problem(self, constraints, scores=None):
        for c in self.candidates:
            c.score = float((scores or {}).get(c.id, 0.0))
        by_pos = [[c for c in self.candidates if c.position == p] for p in range(self.k)]
        sp, sf = {}, {}
        for p in range(self.k - 1):
            for a in by_pos[p]:
                for b in by_pos[p + 1]:
                    sp[(a.id, b.id)], sf[(a.id, b.id)] = self.stitch_cost(a, b)
        first = {c.id: (self.zoo[c.model].stem_params(), self.zoo[c.model].stem_flops()) for c in by_pos[0]}
        last = {c.id: self.head_cost(c) for c in by_pos[-1]}
        return AssemblyProblem(num_positions=self.k, candidates=self.candidates, stitch_params=sp,
                               stitch_flops=sf, first_stem=first, last_head=last,
                               constraints=_plain(constraints))


@torch.no_grad()
def naswot_block_scores(part, zoo, images, max_units=65536, seed=0):
    """Per-block NASWOT log-det of the node-output sign patterns in the source model."""
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, info in part['models'].items():
        zm = zoo[name]
        outs = zm.node_outputs(images)
        kernels = []
        for node in zm.nodes:
            codes = (outs[node].flatten(1) > 0).float()
            if codes.shape[1] > max_units:
                codes = codes[:, torch.randperm(codes.shape[1], generator=g)[:max_units]]
            kernels.append(codes @ codes.T + (1 - codes) @ (1 - codes).T)
        for j, b in enumerate(info['blocks']):
            s, e = zm.index(b['start']), zm.index(b['end'])
            k = sum(kernels[s:e + 1]).double()
            k = k + 1e-3 * torch.eye(k.shape[0], dtype=k.dtype)
            scores[f'{name}:{j}'] = float(torch.linalg.slogdet(k)[1])
    return scores


@torch.no_grad()
def stitch_features(zoo, names, images, batch_size=16):
    """What the stitches are fitted on: every node output and stem output per model."""
    feats = {}
    for name in names:
        zm = zoo[name]
        outs, stems = [], []
        for chunk in images.split(batch_size):
            outs.append(zm.node_outputs(chunk))
            stems.append(zm.stem()(chunk))
        feats[name] = dict(outs={n: torch.cat([o[n] for o in outs]) for n in zm.nodes},
                           stem=torch.cat(stems), nodes=zm.nodes)
    return feats


def build_classifier(blocks, zoo, cfg, input_size, stitch_init='lstsq', stem='source', features=None,
                     frozen_blocks=False):
    """The ImageClassifier for ``blocks`` (sharing the zoo's weights), stitches fitted."""
    backbone = ReassembledBackbone(blocks, input_size=input_size, stem=stem, stitch_init=stitch_init,
                                   frozen_blocks=frozen_blocks, _zoo_cache=zoo)
    last = zoo[blocks[-1]['model']]
    ch = _channels(last, last.index(blocks[-1]['end']))
    model_cfg = dict(cfg.model)
    model = MODELS.build(dict(type=model_cfg.get('type', 'ImageClassifier'),
                              backbone=dict(type='ReassembledBackbone', blocks=blocks, input_size=input_size,
                                            stem=stem, stitch_init=stitch_init, _zoo_cache=zoo),
                              neck=model_cfg.get('neck'), head=dict(model_cfg['head'], in_channels=ch),
                              data_preprocessor=None))
    model.backbone = backbone
    if stitch_init == 'lstsq' and features is not None:
        errors = backbone.fit_stitches(zoo.models, None, features=features)
    else:
        errors = None
    return model, ch, errors


def _blocks_of(ids, tables):
    return [dict(model=tables.by_id[i].model, start=tables.by_id[i].start, end=tables.by_id[i].end)
            for i in ids]


class AssemblyContext:
    """Everything a solver run needs: the problem (measured tables) and the proxy score function.

    Built once per config; ``score_fn(candidate_ids)`` builds the candidate
    network from the zoo's weights, fits its stitches and scores it with the
    whole-model proxy on seeded target batches. Benchmarks run several solvers
    on one context.
    """

    def __init__(self, cfg, work_dir, zoo, part, entries):
        self.cfg, self.zoo, self.part, self.entries = cfg, zoo, part, entries
        opts = dict(stem='source', stitch_init='lstsq', stitch_samples=64)
        opts.update(_plain(cfg.get('assembly', {})))
        self.opts = opts
        self.input_size = zoo.input_size
        self.proxy_cfg = _plain(cfg.proxy)
        self.proxy = PROXIES.build(self.proxy_cfg)
        target = _plain(cfg.target)
        dataset = DATASETS.build(target['dataset'])
        preprocess = target.get('data_preprocessor') or _plain(cfg.get('data_preprocessor'))
        if preprocess is not None:
            preprocess = dict(preprocess)
            preprocess.setdefault('type', 'ClsDataPreprocessor')
        p = self.proxy
        self.batches = sample_batches(dataset, p.num_batches, p.batch_size, p.seed, preprocess=preprocess)
        images = torch.cat([b[0] for b in self.batches])
        self.tables = AssemblyTables(part, zoo, _plain(cfg.model))
        self.scores = naswot_block_scores(part, zoo, images, seed=p.seed)
        self.problem = self.tables.problem(cfg.constraints, self.scores)
        self.features = stitch_features(zoo, list(entries), images[:int(opts['stitch_samples'])]) \
            if opts['stitch_init'] == 'lstsq' else None

    def blocks(self, ids):
        return _blocks_of(ids, self.tables)

    def build(self, ids):
        torch.manual_seed(self.proxy.seed)  # a random stitch init is part of the candidate
        return build_classifier(self.blocks(ids), self.zoo, self.cfg, self.input_size, self.opts['stitch_init'],
                                self.opts['stem'], self.features)

    def score_fn(self, ids):
        model, _, _ = self.build(ids)
        return self.proxy.score(model, self.batches)


def assemble(cfg, work_dir=None, launcher='none', force=False, zoo=None):
    """Solve the reassembly; write assembly.json, assembled.py, assembled_init.pth."""
    from .partition import partition as run_partition
    cfg = as_config(cfg)
    init_default_scope(cfg.get('default_scope', 'dery'))
    work_dir = work_dir or work_dir_of(cfg)
    os.makedirs(work_dir, exist_ok=True)
    logger = get_logger()
    out_path = osp.join(work_dir, 'assembly.json')
    entries = zoo_entries(cfg)
    zoo = zoo or build_zoo(cfg, entries)
    # reuses partition.json when its config_stamp matches the config, recomputes a stale one
    part = run_partition(cfg, work_dir, launcher=launcher, zoo=zoo)
    check_partition_fits(part, zoo, entries)
    stamp = dict(partition_objective=part.get('objective'), partition_seed=part.get('seed'),
                 solver=_plain(cfg.solver), proxy=_plain(cfg.proxy), constraints=_plain(cfg.constraints),
                 assembly=_plain(cfg.get('assembly', {})), zoo=[e.cache_key() for e in entries.values()])
    if osp.isfile(out_path) and not force:
        existing = load_json(out_path, 'assembly file')
        if existing.get('config_stamp') == stamp and osp.isfile(osp.join(work_dir, 'assembled_init.pth')):
            logger.info(f'assemble: reusing {out_path}')
            return existing
    t0 = time.perf_counter()
    ctx = AssemblyContext(cfg, work_dir, zoo, part, entries)
    problem, tables, proxy, opts = ctx.problem, ctx.tables, ctx.proxy, ctx.opts
    solver = SOLVERS.build(_plain(cfg.solver))
    result = solver.solve(problem, score_fn=ctx.score_fn)
    best = result.best
    blocks = ctx.blocks(best.candidate_ids)
    model, channels, errors = ctx.build(best.candidate_ids)
    params, flops = model_complexity(model, ctx.input_size)
    if (params, flops) != (best.params, best.flops):
        logger.warning(f'assemble: measured params/FLOPs {params}/{flops} differ from the tables '
                       f'{best.params}/{best.flops}')
    if not problem.within_budget(params, flops):
        raise AssemblyError(f'the built model ({params} params, {flops} FLOPs) is outside the budget '
                            f'{_plain(cfg.constraints)}; this is a bug in the cost tables, please report it')
    used = []
    for b in blocks:
        if b['model'] not in used:
            used.append(b['model'])
    bb = model.backbone
    stitches = []
    for k, spec in enumerate(bb.stitch_specs, start=1):
        st = bb.stitches[k - 1]
        stitches.append(None if spec is None else dict(
            index=k, src=spec['src'], dst=spec['dst'], in_family=st.in_family, out_family=st.out_family,
            in_shape=st.in_shape, out_shape=st.out_shape, stride=st.stride, params=count_params(st),
            init=opts['stitch_init'], fit_error=None if errors is None else round(errors[k - 1], 6)))
    record = dict(
        blocks=[dict(b, set=tables.by_id[i].set, position=tables.by_id[i].position,
                     family=zoo[b['model']].family, params=tables.by_id[i].params, flops=tables.by_id[i].flops)
                for b, i in zip(blocks, best.candidate_ids)],
        stitches=stitches, stem=opts['stem'], input_size=list(ctx.input_size), out_channels=int(channels),
        params=int(params), flops=int(flops),
        proxy=dict(type=ctx.proxy_cfg['type'], score=best.proxy_score, num_batches=proxy.num_batches,
                   batch_size=proxy.batch_size, seed=proxy.seed),
        constraints=_plain(cfg.constraints),
        solver=dict(type=result.solver or cfg.solver['type'], status=result.status,
                    num_proxy_evals=result.num_proxy_evals,
                    info={k: v for k, v in result.info.items() if 'second' not in k}),
        candidates=[a.to_dict(problem) for a in result.ranked],
        surrogate=dict(type='naswot_block_logdet', scores={k: round(v, 6) for k, v in sorted(ctx.scores.items())}),
        zoo={name: entries[name].to_dict() for name in used},
        seed=proxy.seed, config_stamp=stamp)
    record_timings(work_dir, 'assemble', solver_seconds=round(result.seconds, 3),
                   total_seconds=round(time.perf_counter() - t0, 3),
                   **{k: v for k, v in result.info.items() if 'second' in k})
    with atomic_write(osp.join(work_dir, 'assembled_init.pth'), 'wb') as f:
        torch.save(dict(state_dict=model.state_dict(),
                        meta=dict(dery='assembled_init', blocks=blocks, seed=proxy.seed)), f)
    with atomic_write(osp.join(work_dir, 'assembled.py'), 'w') as f:
        f.write(assembled_config_text(cfg, record, work_dir))
    atomic_save_json(record, out_path)
    logger.info(f'assemble: wrote {out_path} ({params / 1e6:.3f}M params, {flops / 1e9:.4f}G FLOPs, '
                f'proxy {record["proxy"]["score"]}, {result.num_proxy_evals} proxy evals)')
    return record


def backbone_cfg(record, work_dir=None, frozen_blocks=False, init=True):
    """The ReassembledBackbone config of an assembly record (architecture + init file)."""
    cfg = dict(type='ReassembledBackbone',
               blocks=[dict(model=b['model'], start=b['start'], end=b['end']) for b in record['blocks']],
               zoo=[dict(v, name=k) for k, v in record['zoo'].items()], pretrained=False,
               input_size=tuple(record['input_size']), stem=record.get('stem', 'source'),
               stitch_init='random', frozen_blocks=frozen_blocks)
    if init and work_dir is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=osp.join(work_dir, 'assembled_init.pth'),
                               prefix='backbone.')
    return cfg


def assembled_config_text(cfg, record, work_dir):
    """A standalone mmpretrain config building the assembled model (default_scope='dery')."""
    from mmengine.config import Config
    model = _plain(cfg.model)
    bb = dict(model.get('backbone') or {})
    frozen = bb.get('frozen_blocks', False)
    model['backbone'] = backbone_cfg(record, osp.abspath(work_dir), frozen_blocks=frozen)
    model['head'] = dict(model['head'], in_channels=record['out_channels'])
    out = dict(default_scope='dery', model=model)
    for key in ('data_preprocessor', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator', 'optim_wrapper', 'param_scheduler', 'train_cfg', 'val_cfg', 'test_cfg',
                'default_hooks', 'env_cfg', 'randomness', 'custom_hooks'):
        if cfg.get(key) is not None:
            out[key] = _plain(cfg.get(key))
    header = (f'# Generated by dery.apis.assemble from {cfg.filename or "a config"}; do not edit by hand.\n'
              f'# {len(record["blocks"])} blocks, {record["params"] / 1e6:.3f}M params, '
              f'{record["flops"] / 1e9:.4f}G FLOPs. Weights: assembled_init.pth beside this file.\n')
    return header + Config(out).pretty_text


def assembly_table(record):
    """A rich Table summarising an assembly record."""
    from rich.table import Table

    def human(n, unit=''):
        for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
            if abs(n) >= div:
                return f'{n / div:.3f}{suffix}{unit}'
        return f'{n}{unit}'

    cons = record['constraints']
    title = (f'DeRy assembly: {human(record["params"])} params (budget {cons.get("params")}), '
             f'{human(record["flops"])} FLOPs (budget {cons.get("flops")}), proxy '
             f'{record["proxy"]["type"]} {record["proxy"]["score"]:.3f}; solver {record["solver"]["type"]} '
             f'{record["solver"]["status"]}, '
             f'{record["solver"]["num_proxy_evals"]} proxy evals')
    t = Table(title=title)
    for col in ('stage', 'model', 'family', 'nodes', 'set', 'params', 'FLOPs', 'stitch in'):
        t.add_column(col)
    for k, b in enumerate(record['blocks']):
        st = record['stitches'][k - 1] if k > 0 else None
        stitch = '-' if st is None else (f'{st["in_family"]}->{st["out_family"]} {human(st["params"])} '
                                         f'(fit err {st["fit_error"]})')
        t.add_row(str(k), b['model'], b['family'], f'{b["start"]} .. {b["end"]}', str(b['set']),
                  human(b['params']), human(b['flops']), stitch)
    return t


def resolve_model_cfg(cfg, work_dir=None):
    """Point ``backbone=dict(type='ReassembledBackbone', assembly='auto')`` at the work dir's assembly.

    ``assembly`` may be ``'auto'`` (``WORK_DIR/assembly.json``) or a path to an
    ``assembly.json``; the backbone then builds that architecture and loads
    ``assembled_init.pth`` beside it. A head with ``in_channels='auto'`` gets the
    assembly's output channels. Returns True when the config used an assembly.
    """
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') != 'ReassembledBackbone' or not bb.get('assembly'):
        return False
    path = bb['assembly']
    work_dir = work_dir or cfg.work_dir
    if path == 'auto':
        path = osp.join(work_dir, 'assembly.json')
    if not osp.isfile(path):
        raise AssemblyError(f'{path} not found; run tools/assemble.py first (tools/train.py does it for you)')
    record = load_json(path, 'assembly file')
    for key in ('blocks', 'zoo', 'input_size', 'out_channels'):
        if key not in record:
            raise AssemblyError(f'{path} has no `{key}`; it was edited or written by another version. '
                                'Delete it and rerun tools/assemble.py')
    new_bb = backbone_cfg(record, osp.dirname(osp.abspath(path)), frozen_blocks=bb.get('frozen_blocks', False))
    for key in ('out_indices', 'out_norm'):
        if key in bb:
            new_bb[key] = bb[key]
    cfg.model.backbone = new_bb
    head = cfg.model.get('head')
    if head is not None and head.get('in_channels') in ('auto', None):
        head.in_channels = record['out_channels']
    return True
