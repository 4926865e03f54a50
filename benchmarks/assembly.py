"""Solvers on one reassembly problem: ILP (top-M re-ranked) vs the paper's random search vs greedy swaps.

    python benchmarks/assembly.py [--models 6] [--num-sets 4] [--random 500] [--top-m 10]

One zoo (random-init tiny CNNs, ViTs and Swins of several widths, built offline),
one partition (uniform cuts, so the benchmark does not depend on the similarity
stage), one budget; every solver scores whole models with the same proxy
(NASWOT) on the same seeded target batches through the same score function.
Prints, per solver: best whole-model proxy score, number of whole-model proxy
evaluations, wall time, and whether every returned assembly is within budget.
Target: the ILP reaches a best score >= the random search's with <= 1/10 of its
proxy evaluations.
"""
import argparse
import os
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from dery.assembly import AssemblyContext  # noqa: E402
from dery.registry import PARTITIONERS, SOLVERS  # noqa: E402
from dery.zoo import ZooCache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zoo_models(n):
    widths = [(16, 32, 64, 128), (24, 48, 96, 192), (32, 64, 128, 256)]
    models = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            models.append(dict(name=f'cnn{i}', adapter='timm', model='resnet18', family='cnn',
                               kwargs=dict(layers=[1, 2, 2, 1], channels=list(widths[i // 3 % 3])),
                               input_size=[3, 32, 32]))
        elif kind == 1:
            models.append(dict(name=f'vit{i}', adapter='timm', model='vit_tiny_patch16_224', family='vit',
                               kwargs=dict(img_size=32, patch_size=4, embed_dim=48 + 16 * (i // 3), depth=8,
                                           num_heads=2), input_size=[3, 32, 32]))
        else:
            d = 24 + 8 * (i // 3)
            models.append(dict(name=f'swin{i}', adapter='mmpretrain',
                               model=dict(type='SwinTransformer', arch=dict(embed_dims=d, depths=[2, 2, 2, 2],
                                                                            num_heads=[1, 2, 4, 8]),
                                          img_size=32, patch_size=2, window_size=4, pad_small_map=True),
                               family='swin', input_size=[3, 32, 32]))
    return models


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', type=int, default=6)
    p.add_argument('--num-sets', type=int, default=4)
    p.add_argument('--random', type=int, default=500)
    p.add_argument('--top-m', type=int, default=10)
    p.add_argument('--budget', type=float, default=0.6, help='max params as a fraction of the largest model')
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = Config.fromfile(os.path.join(ROOT, 'configs/dery/tiny_cpu.py'))
    cfg.zoo.models = zoo_models(args.models)
    init_default_scope('dery')
    torch.manual_seed(0)
    zoo = ZooCache.from_config(cfg.zoo)
    entries = zoo.entries
    nodes = {n: zoo[n].nodes for n in entries}
    part = PARTITIONERS.build(dict(type='UniformPartitioner', num_sets=args.num_sets)).partition(nodes)
    largest = max(zoo[n].stem_params() + zoo[n].params() for n in entries)
    cfg.constraints = dict(params=(None, int(args.budget * largest)), flops=(None, None))
    t0 = time.perf_counter()
    ctx = AssemblyContext(cfg, zoo, part)
    setup = time.perf_counter() - t0
    print(f'zoo: {len(entries)} models, K={args.num_sets}, {len(ctx.problem.candidates)} candidates, '
          f'{ctx.problem.num_assemblies()} assemblies (before budget); budget params <= '
          f'{cfg.constraints["params"][1]:,}; tables + surrogate + stitch features: {setup:.1f}s')
    solvers = [('ILPSolver(top-%d)' % args.top_m, dict(type='ILPSolver', top_m=args.top_m)),
               ('RandomSearchSolver(%d)' % args.random, dict(type='RandomSearchSolver', num_samples=args.random,
                                                           seed=0)),
               ('GreedySwapSolver', dict(type='GreedySwapSolver', iters=100, seed=0))]
    rows = []
    for label, scfg in solvers:
        calls = {'n': 0}

        def score_fn(ids, _calls=calls):
            _calls['n'] += 1
            return ctx.score_fn(ids)

        t = time.perf_counter()
        res = SOLVERS.build(scfg).solve(ctx.problem, score_fn=score_fn)
        wall = time.perf_counter() - t
        ok = all(ctx.problem.is_feasible(a.candidate_ids) for a in res.assemblies)
        rows.append((label, res.best.proxy_score, res.num_proxy_evals, wall, ok))
    print(f'\n{"solver":28s} {"best proxy":>11s} {"proxy evals":>12s} {"wall s":>8s} {"in budget":>10s}')
    for label, score, evals, wall, ok in rows:
        print(f'{label:28s} {score:11.3f} {evals:12d} {wall:8.1f} {str(ok):>10s}')
    ilp, rnd = rows[0], rows[1]
    print(f'\nILP best - random best: {ilp[1] - rnd[1]:+.3f} (target >= 0); proxy evals ratio ILP/random: '
          f'{ilp[2] / max(rnd[2], 1):.3f} (target <= 0.1)')


if __name__ == '__main__':
    main()
