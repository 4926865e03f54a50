"""Stage 3 end to end: solve, build the best network, measure it, write the outputs.

``WORK_DIR/assembly.json`` (:class:`~dery.assembly.Assembly`),
``assembled_init.pth`` (the built network's weights: zoo blocks, fitted
stitches) and ``assembled.py`` (a standalone mmpretrain config).

A config that gives its assembly (``assembly = dict(blocks=[...], ...)``) is
only built and recorded (:func:`run_fixed_assembly`): no partition, no
solver, no probe data. Either way the built network's measured params and
FLOPs must equal the cost tables' (stem, blocks, stitches, head), else the
stage stops: that would be a bug in the tables.
"""
import os.path as osp
import time

import torch

from dery.models import model_complexity
from dery.registry import SOLVERS
from dery.utils import atomic_write, get_logger, record_timings, safe_torch_load, to_plain
from dery.utils.progress import Progress
from dery.utils.stamp import Stamp
from dery.zoo import count_params
from .config import assembled_config_text
from .context import AssemblyContext, build_classifier, check_assembly_options, network_options
from .record import Assembly, AssemblyBlock, AssemblyError, StitchRecord
from .tables import AssemblyTables

__all__ = ['run_assembly', 'run_fixed_assembly', 'assembly_stamp', 'fixed_assembly_stamp', 'current_assembly']


def _head_inputs(cfg):
    model = to_plain(cfg.model)
    head = {k: v for k, v in (model.get('head') or {}).items() if k != 'in_channels'}
    return dict(type=model.get('type', 'ImageClassifier'), neck=model.get('neck'), head=head)


def assembly_stamp(cfg, partition_stamp):
    """Everything the assembly depends on: the partition's inputs, the target data, proxy,
    solver, budget, assembly options and the classifier's neck and head (their costs count)."""
    target = to_plain(cfg.target)
    preprocess = target.get('data_preprocessor') or to_plain(cfg.get('data_preprocessor'))
    return Stamp('assembly', dict(
        partition=partition_stamp.inputs, target=dict(dataset=target.get('dataset'), data_preprocessor=preprocess),
        proxy=to_plain(cfg.proxy), solver=to_plain(cfg.solver), constraints=to_plain(cfg.constraints),
        assembly=check_assembly_options(cfg.get('assembly')), model=_head_inputs(cfg)))


def fixed_assembly_stamp(cfg, zoo):
    """What a fixed assembly (``assembly.blocks``) depends on: the zoo entries of its blocks, the
    assembly options, the classifier's neck and head (and the target images when its stitches
    are fitted)."""
    opts = check_assembly_options(cfg.get('assembly'))
    used = list(dict.fromkeys(b['model'] for b in opts['blocks']))
    inputs = dict(fixed=True, zoo=zoo.identity(used), assembly=opts, model=_head_inputs(cfg))
    if opts['stitch_init'] == 'lstsq':
        target = to_plain(cfg.get('target') or {})
        inputs['target'] = dict(dataset=target.get('dataset'), data_preprocessor=target.get('data_preprocessor')
                                or to_plain(cfg.get('data_preprocessor')))
    return Stamp('assembly', inputs)


def current_assembly(work_dir, stamp):
    """``(Assembly or None, why not)``: the work dir's assembly when ``stamp`` matches it and
    ``assembled_init.pth`` is the one made with it."""
    path, init = osp.join(work_dir, 'assembly.json'), osp.join(work_dir, 'assembled_init.pth')
    if not osp.isfile(path):
        return None, 'no assembly.json yet'
    existing = Assembly.load(path)
    why = stamp.why_different(existing.stamp)
    if why is not None:
        return None, why
    if not osp.isfile(init):
        return None, 'assembled_init.pth is missing'
    meta = safe_torch_load(init).get('meta') or {}
    if meta.get('stamp') != stamp.digest:
        return None, 'assembled_init.pth was made by another assembly'
    return existing, None


def _current_or_why(work_dir, stamp, force):
    """``(path of assembly.json, its record when it is current)``; says why it is not reused."""
    out_path = osp.join(work_dir, 'assembly.json')
    if not force and osp.isfile(out_path):
        existing, why = current_assembly(work_dir, stamp)
        if existing is not None:
            get_logger().info(f'assemble: reusing {out_path}')
            return out_path, existing
        get_logger().info(f'assemble: {why}; recomputing')
    return out_path, None


def run_assembly(cfg, work_dir, zoo, part, partition_stamp, force=False):
    """Solve the reassembly of ``part`` over ``zoo``; write and return the :class:`Assembly`.

    ``partition_stamp``: the :class:`~dery.utils.stamp.Stamp` ``part`` was made
    with (the assembly is redone when it changes).
    """
    stamp = assembly_stamp(cfg, partition_stamp)
    out_path, existing = _current_or_why(work_dir, stamp, force)
    if existing is not None:
        return existing
    t0 = time.perf_counter()
    ctx = AssemblyContext(cfg, zoo, part, progress=True, work_dir=work_dir)
    try:
        return _solve_and_write(cfg, work_dir, zoo, ctx, stamp, out_path, t0)
    finally:
        ctx.close()


def _solve_and_write(cfg, work_dir, zoo, ctx, stamp, out_path, t0):
    logger = get_logger()
    problem, tables, proxy, opts = ctx.problem, ctx.tables, ctx.proxy, ctx.opts
    solver = SOLVERS.build(to_plain(cfg.solver))
    with Progress() as prog:
        task = prog.add('assemble: proxy evaluations (whole networks)', getattr(solver, 'top_m', None))

        def score_fn(ids):
            value = ctx.score_fn(ids)
            prog.advance(task)
            return value
        result = solver.solve(problem, score_fn=score_fn)
    t_final = time.perf_counter()
    best = result.best
    model, errors = ctx.build(best.candidate_ids)
    params, flops = _check_measured(model, ctx.input_size, (best.params, best.flops))
    if not problem.within_budget(params, flops):
        raise AssemblyError(f'the built model ({params} params, {flops} FLOPs) is outside the budget '
                            f'{to_plain(cfg.constraints)}; this is a bug in the cost tables, please report it')
    blocks = []
    for cid, state in zip(best.candidate_ids, problem.walk(best.candidate_ids)):
        c = tables.by_id[cid]
        blocks.append(AssemblyBlock(model=c.model, start=c.start, end=c.end, set=c.set, position=c.position,
                                    family=zoo.card(c.model).family, params=c.params,
                                    flops=c.flops if state is None else problem.states.block[(cid, state)][1]))
    record = _record(model, blocks, errors, opts, ctx.input_size, zoo, params, flops, stamp,
                     proxy=dict(type=ctx.proxy_cfg['type'], score=best.proxy_score, num_batches=proxy.num_batches,
                                batch_size=proxy.batch_size, seed=proxy.seed),
                     constraints=to_plain(cfg.constraints),
                     solver=dict(type=result.solver or cfg.solver['type'], status=result.status,
                                 num_proxy_evals=result.num_proxy_evals,
                                 info={k: v for k, v in result.info.items() if 'second' not in k}),
                     candidates=[a.to_dict(problem) for a in result.ranked],
                     surrogate=dict(type='naswot_block_logdet',
                                    scores={k: round(v, 6) for k, v in sorted(ctx.scores.items())},
                                    **(dict(unscored=sorted(ctx.unscored)) if ctx.unscored else {})),
                     seed=proxy.seed)
    _write(cfg, work_dir, model, record, stamp, proxy.seed)
    steps = {k: round(v, 3) for k, v in ctx.times.items()}
    record_timings(work_dir, 'assemble', solver_seconds=round(result.seconds, 3), **steps,
                   final_build_and_write_seconds=round(time.perf_counter() - t_final, 3),
                   total_seconds=round(time.perf_counter() - t0, 3),
                   **{k: v for k, v in result.info.items() if 'second' in k})
    logger.info(f'assemble: wrote {out_path} ({params / 1e6:.3f}M params, {flops / 1e9:.4f}G FLOPs, '
                f'proxy {record.proxy["score"]}, {result.num_proxy_evals} proxy evals)')
    return record


def _check_measured(model, input_size, table):
    """The built model's ``(params, flops)``; they must equal the cost tables' ``table``."""
    params, flops = model_complexity(model, input_size)
    if (params, flops) != tuple(int(v) for v in table):
        raise AssemblyError(f'the built model has {params} params and {flops} FLOPs, the cost tables say '
                            f'{table[0]} and {table[1]}; this is a bug in the cost tables, please report it')
    return int(params), int(flops)


def _record(model, blocks, errors, opts, input_size, zoo, params, flops, stamp, **fields):
    """The :class:`Assembly` of the built ``model`` on ``blocks`` (stitches read off the network)."""
    bb = model.backbone
    stitches = []
    for k, spec in enumerate(bb.stitch_specs, start=1):
        st = bb.stitches[k - 1]
        stitches.append(None if spec is None else StitchRecord(
            index=k, src=spec['src'], dst=spec['dst'], in_family=st.in_family, out_family=st.out_family,
            in_shape=st.in_shape, out_shape=st.out_shape, stride=st.stride, params=count_params(st),
            init=opts['stitch_init'], fit_error=None if errors is None else round(errors[k - 1], 6)))
    chain = opts['resolution'] == 'chain'
    if chain:  # the strides the network was built with: the record rebuilds it exactly
        for k, b in enumerate(blocks):
            st = bb.stem_stitch if k == 0 else bb.stitches[k - 1]
            b.stride = getattr(st, 'stride', None)
    sst = bb.stem_stitch
    stem_stitch = None if sst is None else dict(in_shape=sst.in_shape, out_shape=sst.out_shape, stride=sst.stride,
                                                params=count_params(sst))
    used = list(dict.fromkeys(b.model for b in blocks))
    return Assembly(blocks=blocks, stitches=stitches, stem=opts['stem'], resolution=opts['resolution'],
                    stitch=dict(opts['stitch']), stitch_consecutive=opts['stitch_consecutive'],
                    stem_stitch=stem_stitch, input_size=list(input_size),
                    out_channels=int(bb.out_specs[-1].channels), params=int(params), flops=int(flops),
                    zoo={name: zoo.entries[name].to_dict() for name in used}, stamp=stamp.to_json(), **fields)


def _write(cfg, work_dir, model, record, stamp, seed):
    with atomic_write(osp.join(work_dir, 'assembled_init.pth'), 'wb') as f:
        torch.save(dict(state_dict=model.state_dict(),
                        meta=dict(dery='assembled_init', blocks=[b.cut() for b in record.blocks], seed=seed,
                                  stamp=stamp.digest)), f)
    with atomic_write(osp.join(work_dir, 'assembled.py'), 'w') as f:
        f.write(assembled_config_text(cfg, record, work_dir))
    record.save(osp.join(work_dir, 'assembly.json'))


def run_fixed_assembly(cfg, zoo, work_dir, force=False):
    """Build and record the assembly the config gives (``assembly.blocks``): no partition, solver or
    probe data. Writes the same outputs as :func:`run_assembly` (zoo weights in
    ``assembled_init.pth``); stitches are fitted only with ``stitch_init='lstsq'`` (then on
    ``stitch_samples`` images of ``target.dataset``)."""
    logger = get_logger()
    stamp = fixed_assembly_stamp(cfg, zoo)
    out_path, existing = _current_or_why(work_dir, stamp, force)
    if existing is not None:
        return existing
    t0 = time.perf_counter()
    opts = check_assembly_options(cfg.get('assembly'))
    model_cfg = to_plain(cfg.model)
    blocks = opts['blocks']
    tables = AssemblyTables.fixed(zoo, model_cfg, opts, blocks)
    problem = tables.problem(to_plain(cfg.get('constraints')) or None)
    ids = [c.id for c in tables.candidates]
    why = problem.structure_error(ids)
    if why is not None:
        raise AssemblyError(f'the fixed assembly cannot be built: {why}')
    features = None
    if opts['stitch_init'] == 'lstsq':
        features = _fit_features(cfg, zoo, opts, [b['model'] for b in blocks])
    torch.manual_seed(0)
    model, errors = build_classifier(blocks, zoo, model_cfg, opts['stitch_init'], features=features,
                                     **network_options(opts))
    params, flops = _check_measured(model, zoo.input_size, problem.cost(ids))
    if not problem.within_budget(params, flops):
        logger.warning(f'assemble: the fixed assembly ({params} params, {flops} FLOPs) is outside the budget '
                       f'{to_plain(cfg.constraints)}')
    records = []
    for c, state in zip(tables.candidates, problem.walk(ids)):
        records.append(AssemblyBlock(model=c.model, start=c.start, end=c.end, set=None, position=c.position,
                                     family=zoo[c.model].family, params=c.params,
                                     flops=c.flops if state is None else problem.states.block[(c.id, state)][1]))
    record = _record(model, records, errors, opts, zoo.input_size, zoo, params, flops, stamp,
                     constraints=to_plain(cfg.get('constraints')) or {},
                     solver=dict(type='fixed', status='given', num_proxy_evals=0, info={}), seed=0)
    record_timings(work_dir, 'assemble', solver_seconds=0.0, total_seconds=round(time.perf_counter() - t0, 3))
    _write(cfg, work_dir, model, record, stamp, 0)
    logger.info(f'assemble: wrote {out_path} (fixed assembly, {params / 1e6:.3f}M params, {flops / 1e9:.4f}G FLOPs)')
    return record


def _fit_features(cfg, zoo, opts, names):
    from dery.proxies import sample_batches
    from dery.registry import DATASETS
    from dery.zoo import capture_node_features
    target = to_plain(cfg.get('target') or {})
    if 'dataset' not in target:
        raise AssemblyError("assembly.stitch_init='lstsq' fits the stitches on target images: give "
                            "target = dict(dataset=...), or use stitch_init='random' (the original code's)")
    preprocess = target.get('data_preprocessor') or to_plain(cfg.get('data_preprocessor'))
    if preprocess is not None:
        preprocess = dict(preprocess)
        preprocess.setdefault('type', 'ClsDataPreprocessor')
    batches = sample_batches(DATASETS.build(target['dataset']), 1, int(opts['stitch_samples']), 0,
                             preprocess=preprocess)
    images = torch.cat([b[0] for b in batches])
    return capture_node_features(zoo, list(dict.fromkeys(names)), images)
