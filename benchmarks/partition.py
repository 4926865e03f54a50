"""Benchmark: DeRy's vectorised CoverSetPartitioner vs a plain-Python reference.

Builds a synthetic node-similarity input the size of the paper's zoo (24 models of 8-33
nodes, CKA-like values), runs

  (a) ``dery.partition.CoverSetPartitioner`` (numpy, all restarts in one batch), and
  (b) ``benchmarks/reference_partition.py``: a REFERENCE plain-Python re-implementation of
      the paper's loop, on the same input, the same initial cuts and the same seed,

and prints both wall times (best of ``--repeat`` / ``--ref-repeat`` runs, 3 each by default)
and objectives. Targets: our objective >= the reference's, our time <= 2 s, and >= 20x
faster than the reference. Both start from the same initial cuts
(``dery.partition.initial_starts`` with the same seed); with ``refine=0`` ours makes the same
decisions as the reference, the default ``refine=1`` can only raise the objective.

    .venv/bin/python benchmarks/partition.py [--restarts 200] [--repeat 3] [--check]
"""
import argparse
import os
import os.path as osp
import platform
import sys
import time

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from reference_partition import reference_partition  # noqa: E402

from dery.partition import CoverSetPartitioner, evaluate_partition, initial_starts  # noqa: E402


def synthetic_zoo(num_models=24, min_nodes=8, max_nodes=33, seed=0):
    """CKA-like node similarities for a synthetic zoo.

    Every model gets a monotone "functional depth" profile over its nodes (random warp
    and jitter); two nodes are alike when their depths are close, models of the same
    family (cnn / transformer) a bit more. Values lie in [0, 1]; ``(b, a)`` is the
    transpose of ``(a, b)``; self pairs are included.
    """
    rng = np.random.default_rng(seed)
    nodes, depth, family = {}, {}, {}
    for m in range(num_models):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        name = f'model{m:02d}'
        nodes[name] = [f'{name}.node{i}' for i in range(n)]
        gamma = rng.uniform(0.6, 1.6)
        z = np.linspace(0.0, 1.0, n) ** gamma + rng.normal(0, 0.03, n)
        depth[name] = np.maximum.accumulate(z)
        family[name] = int(rng.integers(0, 2))
    names = list(nodes)
    sim = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            d = depth[a][:, None] - depth[b][None, :]
            scale = 1.0 if family[a] == family[b] else 0.85
            s = scale * (0.25 + 0.7 * np.exp(-d ** 2 / 0.02))
            s = np.clip(s + rng.normal(0, 0.02, s.shape), 0.0, 1.0)
            if a == b:
                s = (s + s.T) / 2
                np.fill_diagonal(s, 1.0)
            sim[(a, b)] = s
            sim[(b, a)] = s.T
    return nodes, sim


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', type=int, default=24)
    parser.add_argument('--min-nodes', type=int, default=8)
    parser.add_argument('--max-nodes', type=int, default=33)
    parser.add_argument('--num-sets', type=int, default=4)
    parser.add_argument('--eps', type=float, default=0.2)
    parser.add_argument('--restarts', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0, help='partitioner seed')
    parser.add_argument('--data-seed', type=int, default=0, help='synthetic input seed')
    parser.add_argument('--repeat', type=int, default=3, help='timed runs of ours (best)')
    parser.add_argument('--ref-repeat', type=int, default=3,
                        help='timed runs of the reference (best)')
    parser.add_argument('--check', action='store_true',
                        help='exit with status 1 when a target is missed')
    args = parser.parse_args()

    nodes, sim = synthetic_zoo(args.models, args.min_nodes, args.max_nodes, args.data_seed)
    sizes = [len(v) for v in nodes.values()]
    print(f'input: {len(nodes)} models, {min(sizes)}-{max(sizes)} nodes '
          f'({sum(sizes)} in all), K={args.num_sets}, eps={args.eps}, '
          f'{args.restarts} restarts, seed={args.seed}')
    print(f'machine: {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPUs, numpy {np.__version__}, python {platform.python_version()}')

    part = CoverSetPartitioner(num_sets=args.num_sets, eps=args.eps, restarts=args.restarts,
                               seed=args.seed)
    times = []
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        result = part.partition(nodes, sim).to_json()
        times.append(time.perf_counter() - t0)
    ours_t = min(times)
    ours_obj = evaluate_partition(result, sim)

    init = initial_starts(nodes, args.num_sets, args.restarts, args.seed, args.eps)
    ref_times = []
    for _ in range(max(args.ref_repeat, 1)):
        t0 = time.perf_counter()
        ref = reference_partition(nodes, sim, args.num_sets, args.eps, args.restarts,
                                  seed=args.seed, init_starts=init)
        ref_times.append(time.perf_counter() - t0)
    ref_t = min(ref_times)

    same = all(
        [b['start_index'] for b in result['models'][name]['blocks']] == ref['starts'][m]
        for m, name in enumerate(nodes))
    speedup = ref_t / ours_t
    obj_ok = ours_obj >= ref['objective'] - 1e-9 * abs(ref['objective'])
    print(f'(a) ours      CoverSetPartitioner (numpy): {ours_t:8.3f} s  '
          f'(best of {len(times)}: {", ".join(f"{t:.3f}" for t in times)})')
    print(f'(b) reference plain-Python paper loop     : {ref_t:8.3f} s  '
          f'(best of {len(ref_times)})  objective {ref["objective"]:.6f}')
    print(f'(c) ours      objective                   : {ours_obj:.6f}  '
          f'(outer iterations {result["iterations"]}, best restart {result["best_restart"]}, '
          f'reference best restart {ref["best_restart"]}, same cuts: {same})')
    print(f'speed-up {speedup:.1f}x')
    checks = [('objective >= reference', obj_ok), ('time <= 2 s', ours_t <= 2.0),
              ('>= 20x faster', speedup >= 20.0)]
    for name, ok in checks:
        print(f'  [{"PASS" if ok else "FAIL"}] {name}')
    if args.check and not all(ok for _, ok in checks):
        sys.exit(1)


if __name__ == '__main__':
    main()
