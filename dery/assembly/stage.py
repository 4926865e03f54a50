"""Stage 3 end to end: solve, build the best network, measure it, write the outputs.

``WORK_DIR/assembly.json`` (:class:`~dery.assembly.Assembly`),
``assembled_init.pth`` (the built network's weights: zoo blocks, fitted
stitches) and ``assembled.py`` (a standalone mmpretrain config).
"""
import os.path as osp
import time

import torch

from dery.models import model_complexity
from dery.registry import SOLVERS
from dery.utils import atomic_write, get_logger, record_timings, safe_torch_load, to_plain
from dery.utils.stamp import Stamp
from dery.zoo import count_params
from .config import assembled_config_text
from .context import DEFAULT_OPTIONS, AssemblyContext
from .record import Assembly, AssemblyBlock, AssemblyError, StitchRecord

__all__ = ['run_assembly', 'assembly_stamp', 'current_assembly']


def assembly_stamp(cfg, partition_stamp):
    """Everything the assembly depends on: the partition's inputs, the target data, proxy,
    solver, budget, assembly options and the classifier's neck and head (their costs count)."""
    target = to_plain(cfg.target)
    preprocess = target.get('data_preprocessor') or to_plain(cfg.get('data_preprocessor'))
    model = to_plain(cfg.model)
    head = {k: v for k, v in (model.get('head') or {}).items() if k != 'in_channels'}
    return Stamp('assembly', dict(
        partition=partition_stamp.inputs, target=dict(dataset=target.get('dataset'), data_preprocessor=preprocess),
        proxy=to_plain(cfg.proxy), solver=to_plain(cfg.solver), constraints=to_plain(cfg.constraints),
        assembly=dict(DEFAULT_OPTIONS, **to_plain(cfg.get('assembly') or {})),
        model=dict(type=model.get('type', 'ImageClassifier'), neck=model.get('neck'), head=head)))


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


def run_assembly(cfg, work_dir, zoo, part, partition_stamp, force=False):
    """Solve the reassembly of ``part`` over ``zoo``; write and return the :class:`Assembly`.

    ``partition_stamp``: the :class:`~dery.utils.stamp.Stamp` ``part`` was made
    with (the assembly is redone when it changes).
    """
    logger = get_logger()
    out_path = osp.join(work_dir, 'assembly.json')
    entries = zoo.entries
    stamp = assembly_stamp(cfg, partition_stamp)
    if not force and osp.isfile(out_path):
        existing, why = current_assembly(work_dir, stamp)
        if existing is not None:
            logger.info(f'assemble: reusing {out_path}')
            return existing
        logger.info(f'assemble: {why}; recomputing')
    t0 = time.perf_counter()
    ctx = AssemblyContext(cfg, zoo, part)
    problem, tables, proxy, opts = ctx.problem, ctx.tables, ctx.proxy, ctx.opts
    solver = SOLVERS.build(to_plain(cfg.solver))
    result = solver.solve(problem, score_fn=ctx.score_fn)
    best = result.best
    model, errors = ctx.build(best.candidate_ids)
    params, flops = model_complexity(model, ctx.input_size)
    if (params, flops) != (best.params, best.flops):
        logger.warning(f'assemble: measured params/FLOPs {params}/{flops} differ from the tables '
                       f'{best.params}/{best.flops}')
    if not problem.within_budget(params, flops):
        raise AssemblyError(f'the built model ({params} params, {flops} FLOPs) is outside the budget '
                            f'{to_plain(cfg.constraints)}; this is a bug in the cost tables, please report it')
    bb = model.backbone
    stitches = []
    for k, spec in enumerate(bb.stitch_specs, start=1):
        st = bb.stitches[k - 1]
        stitches.append(None if spec is None else StitchRecord(
            index=k, src=spec['src'], dst=spec['dst'], in_family=st.in_family, out_family=st.out_family,
            in_shape=st.in_shape, out_shape=st.out_shape, stride=st.stride, params=count_params(st),
            init=opts['stitch_init'], fit_error=None if errors is None else round(errors[k - 1], 6)))
    blocks = []
    for cid in best.candidate_ids:
        c = tables.by_id[cid]
        blocks.append(AssemblyBlock(model=c.model, start=c.start, end=c.end, set=c.set, position=c.position,
                                    family=zoo[c.model].family, params=c.params, flops=c.flops))
    used = list(dict.fromkeys(b.model for b in blocks))
    record = Assembly(
        blocks=blocks, stitches=stitches, stem=opts['stem'], input_size=list(ctx.input_size),
        out_channels=int(bb.out_specs[-1].channels), params=int(params), flops=int(flops),
        proxy=dict(type=ctx.proxy_cfg['type'], score=best.proxy_score, num_batches=proxy.num_batches,
                   batch_size=proxy.batch_size, seed=proxy.seed),
        constraints=to_plain(cfg.constraints),
        solver=dict(type=result.solver or cfg.solver['type'], status=result.status,
                    num_proxy_evals=result.num_proxy_evals,
                    info={k: v for k, v in result.info.items() if 'second' not in k}),
        candidates=[a.to_dict(problem) for a in result.ranked],
        surrogate=dict(type='naswot_block_logdet', scores={k: round(v, 6) for k, v in sorted(ctx.scores.items())}),
        zoo={name: entries[name].to_dict() for name in used}, seed=proxy.seed, stamp=stamp.to_json())
    record_timings(work_dir, 'assemble', solver_seconds=round(result.seconds, 3),
                   total_seconds=round(time.perf_counter() - t0, 3),
                   **{k: v for k, v in result.info.items() if 'second' in k})
    with atomic_write(osp.join(work_dir, 'assembled_init.pth'), 'wb') as f:
        torch.save(dict(state_dict=model.state_dict(),
                        meta=dict(dery='assembled_init', blocks=[b.cut() for b in blocks], seed=proxy.seed,
                                  stamp=stamp.digest)), f)
    with atomic_write(osp.join(work_dir, 'assembled.py'), 'w') as f:
        f.write(assembled_config_text(cfg, record, work_dir))
    record.save(out_path)
    logger.info(f'assemble: wrote {out_path} ({params / 1e6:.3f}M params, {flops / 1e9:.4f}G FLOPs, '
                f'proxy {record.proxy["score"]}, {result.num_proxy_evals} proxy evals)')
    return record
