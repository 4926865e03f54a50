"""Benchmark of the similarity stage (not a test).

Prints, on one zoo and one probe set:

* R1 = similarity stage time / forward-only time of the same models over the
  same data (same dataset object, subset, loader and normalisation; the
  forward-only loop runs each whole model, head included). Target <= 1.15 on
  CPU with >= 6 zoo models. Every stage run starts cold (no memoised weight
  digests, node shapes traced again, empty work dir). Measured *in-run*
  (:class:`PairedForward`): each time the stage runs a model on a batch, a
  plain forward of that model on that batch is timed right next to it, so
  both loops are timed under the same machine load (on a shared machine two
  separate runs of the same loop differ by up to 30 %). ``--end-to-end``
  also times separate runs. The median over ``--rounds`` is reported, for
  process CPU time and for wall time.
* R2 = time of a per-pair full-Gram linear CKA loop (the original DeRy code's
  approach: every node pair separately, both Gram matrices rebuilt per pair,
  float32) / time of ``LinearCKA`` on the same stored features, and the max
  |difference|. Target R2 >= 20 with 8 models, values equal within 1e-4.
* peak heap memory (glibc ``mallinfo2``: live malloc'd bytes, torch's CPU
  tensors included, sampled every millisecond) above the start of each phase.

Usage::

    .venv/bin/python benchmarks/similarity.py [--samples 512] [--models 8] [--rounds 3]
        [--threads 1] [--end-to-end] [--memory-scaling]
"""
import argparse
import ctypes
import os
import os.path as osp
import shutil
import sys
import tempfile
import threading
import time
from itertools import combinations

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dery.registry import DATASETS  # noqa: E402
from dery.similarity import LinearCKA, ProbeSet, capture, compute_similarity  # noqa: E402
from dery.zoo import build_zoo_model  # noqa: E402

ZOO = [
    dict(name='resnet18', adapter='timm', model='resnet18', family='cnn'),
    dict(name='vit_tiny', adapter='timm', model='vit_tiny_patch16_224', family='vit',
         kwargs=dict(img_size=32, patch_size=4, depth=6)),
    dict(name='swin_tiny', adapter='timm', model='swin_tiny_patch4_window7_224', family='swin',
         kwargs=dict(img_size=32, window_size=4, embed_dim=48, depths=(2, 2, 4, 2),
                     num_heads=(2, 2, 4, 8))),
    dict(name='mobilenetv3', adapter='timm', model='mobilenetv3_large_100', family='cnn'),
    dict(name='regnetx_002', adapter='timm', model='regnetx_002', family='cnn'),
    dict(name='resnet34', adapter='timm', model='resnet34', family='cnn'),
    dict(name='efficientnet_b0', adapter='timm', model='efficientnet_b0', family='cnn'),
    dict(name='resnet50', adapter='timm', model='resnet50', family='cnn'),
]


# --------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------
class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',
                                               'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                                               'keepcost')]


def _heap_fn():
    try:
        libc = ctypes.CDLL('libc.so.6')
        fn = libc.mallinfo2
        fn.restype = _MallInfo2
        fn()
        return lambda: (lambda m: m.uordblks + m.hblkhd)(fn())
    except (OSError, AttributeError):
        return None


_HEAP = _heap_fn()


class Measure:
    """Wall time, process CPU time and peak heap above the start."""

    def __enter__(self):
        self.peak = self.start_heap = _HEAP() if _HEAP else 0
        self._stop = threading.Event()
        if _HEAP:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _HEAP())

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self._stop.set()
        if _HEAP:
            self._thread.join()
            self.peak = max(self.peak, _HEAP())
        self.peak_mb = (self.peak - self.start_heap) / 2**20 if _HEAP else float('nan')


# --------------------------------------------------------------------------
# the two loops of R1
# --------------------------------------------------------------------------
def forward_only(zoo, probe_cfg):
    probe = ProbeSet(probe_cfg)
    with torch.no_grad():
        for _, x in probe.iter_batches(range(len(probe))):
            for m in zoo:
                xi = x
                if tuple(x.shape[2:]) != tuple(m.input_size[1:]):
                    xi = torch.nn.functional.interpolate(x, size=m.input_size[1:], mode='bilinear')
                m.model(xi)


def similarity_stage(zoo, probe_cfg, sim_cfg):
    # a cold start every time: no memoised weight digests, no traced node shapes
    capture._DIGESTS.clear()
    for m in zoo:
        m._trace = None
    wd = tempfile.mkdtemp(prefix='dery_sim_bench_')
    try:
        return compute_similarity(zoo, probe_cfg, dict(sim_cfg, plot=False, progress=False), wd)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


class PairedForward:
    """Time the stage and, in the same run, a plain forward of the same model on the same batch.

    Every call that runs a zoo model on a batch inside the stage (``capture_batch`` /
    ``capture_nodes``) is followed (or, every other call, preceded) by ``model(x)`` of the same
    model on the same input, timed separately; the time spent fetching batches (loader and
    normalisation, common to both loops) is timed too. Then, from one run:

        stage time        S = total - paired forwards
        forward-only time F = batch fetching + paired forwards
        R1 = S / F

    Adjacent (~50 ms apart) measurements see the same machine load, which makes this robust
    on a shared machine where two separate runs can differ by 30 %.
    """

    def __init__(self):
        self.wall = dict(cap=0.0, fwd=0.0, data=0.0)
        self.cpu = dict(cap=0.0, fwd=0.0, data=0.0)
        self._k = 0

    def _timed(self, key, fn):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn()
        finally:
            self.wall[key] += time.perf_counter() - t
            self.cpu[key] += time.process_time() - c

    def wrap_capture(self, orig):
        def fn(m, x, *a, **kw):
            def fwd():
                with torch.no_grad():
                    m.model(x)
            self._k += 1
            if self._k % 2:
                out = self._timed('cap', lambda: orig(m, x, *a, **kw))
                self._timed('fwd', fwd)
            else:
                self._timed('fwd', fwd)
                out = self._timed('cap', lambda: orig(m, x, *a, **kw))
            return out
        return fn

    def wrap_iter(self, orig):
        paired = self

        def it(probe, batch_ids):
            gen = orig(probe, batch_ids)
            while True:
                try:
                    item = paired._timed('data', lambda: next(gen))
                except StopIteration:
                    return
                yield item
        return it

    def run(self, zoo, probe_cfg, sim_cfg):
        from dery.similarity import pipeline
        saved = pipeline.capture_batch, pipeline.capture_nodes, ProbeSet.iter_batches
        pipeline.capture_batch = self.wrap_capture(saved[0])
        pipeline.capture_nodes = self.wrap_capture(saved[1])
        ProbeSet.iter_batches = self.wrap_iter(saved[2])
        try:
            with Measure() as ms:
                similarity_stage(zoo, probe_cfg, sim_cfg)
        finally:
            pipeline.capture_batch, pipeline.capture_nodes, ProbeSet.iter_batches = saved
        out = {}
        for unit, total, parts in (('wall', ms.wall, self.wall), ('cpu', ms.cpu, self.cpu)):
            stage = total - parts['fwd']
            fwd_only = parts['data'] + parts['fwd']
            out[unit] = dict(stage=stage, fwd_only=fwd_only, r1=stage / fwd_only,
                             other=stage - parts['data'] - parts['cap'], **parts)
        return out


# --------------------------------------------------------------------------
# R2: the original code's per-pair loop (simlarity/compare_functions/cka_torch.py)
# --------------------------------------------------------------------------
def _gram_linear(x):
    return torch.mm(x, x.T)


def _center_gram(gram):
    means = torch.mean(gram, dim=0, dtype=torch.float64)
    means -= torch.mean(means) / 2
    gram -= torch.unsqueeze(means, len(means.shape))
    gram -= torch.unsqueeze(means, 0)
    return gram


def _cka_pair(x1, x2):
    g1 = _center_gram(_gram_linear(x1))
    g2 = _center_gram(_gram_linear(x2))
    return (g1.view(-1) * g2.view(-1)).sum() / (torch.norm(g1) * torch.norm(g2))


def per_pair_loop(feats, names):
    """All unordered model pairs (self pairs included), each node pair separately."""
    out = {}
    for a, b in list(combinations(names, 2)) + [(m, m) for m in names]:
        mat = torch.zeros(len(feats[a]), len(feats[b]))
        for i, v1 in enumerate(feats[a]):
            for j, v2 in enumerate(feats[b]):
                mat[i, j] = _cka_pair(v1, v2)
        out[(a, b)] = mat
        out[(b, a)] = mat.T
    return out


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', type=int, default=8, help='zoo size (<= 8)')
    ap.add_argument('--samples', type=int, default=512, help='probe samples (1/20 of the set)')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--rounds', type=int, default=3, help='timing rounds (median reported)')
    ap.add_argument('--end-to-end', action='store_true',
                    help='also time separate stage and forward-only runs (noisy on shared machines)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--skip-r2', action='store_true')
    ap.add_argument('--memory-scaling', action='store_true',
                    help='also show MinibatchCKA (store=accumulators) peak heap at 1x and 4x samples')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    zoo = [build_zoo_model(dict(e, input_size=[3, 32, 32]), pretrained=False)
           for e in ZOO[:args.models]]
    dataset = DATASETS.build(dict(type='SyntheticImageDataset', num_samples=20 * args.samples,
                                  num_classes=10, image_size=32, pipeline=[dict(type='PackInputs')]))
    probe_cfg = dict(dataset=dataset, batch_size=args.batch_size, num_samples=None, seed=0)
    n_nodes = sum(len(m.nodes) for m in zoo)
    print(f'zoo: {len(zoo)} models, {n_nodes} nodes: ' +
          ', '.join(f'{m.name}({len(m.nodes)})' for m in zoo))
    print(f'probe: SyntheticImageDataset {len(dataset)} images 32x32, 1/20 -> {args.samples} '
          f'samples, batch {args.batch_size}; torch threads {args.threads}; '
          f'{os.cpu_count()} CPUs; torch {torch.__version__}')

    # warm-up (allocator, lazy init), not timed
    forward_only(zoo, dict(probe_cfg, num_samples=args.batch_size))

    phases = [('LinearCKA (store=features)', dict(type='LinearCKA')),
              ('LinearCKA float32 (store=features)', dict(type='LinearCKA', dtype='float32')),
              ('MinibatchCKA (store=features)', dict(type='MinibatchCKA')),
              ('MinibatchCKA (store=accumulators)', dict(type='MinibatchCKA',
                                                        store='accumulators'))]
    # (1) paired, in-run measurement (see PairedForward)
    paired = {name: [] for name, _ in phases}
    for r in range(args.rounds):
        for name, cfg in phases:
            p = PairedForward().run(zoo, probe_cfg, cfg)
            paired[name].append(p)
            c = p['cpu']
            print(f'  paired round {r + 1}: {name:34s} R1 cpu {c["r1"]:5.3f} wall '
                  f'{p["wall"]["r1"]:5.3f} | cpu s: stage {c["stage"]:6.2f} = data {c["data"]:5.2f} '
                  f'+ capture {c["cap"]:6.2f} + other {c["other"]:5.2f}; forward-only '
                  f'{c["fwd_only"]:6.2f} = data + forwards {c["fwd"]:6.2f}', flush=True)
    # (2) end-to-end: each stage run paired with a separate forward-only run just before it
    runs = {name: [] for name, _ in phases}
    fwd_runs = {name: [] for name, _ in phases}
    for r in range(args.rounds if args.end_to_end else 0):
        for name, cfg in phases:
            with Measure() as mf:
                forward_only(zoo, probe_cfg)
            with Measure() as ms:
                similarity_stage(zoo, probe_cfg, cfg)
            fwd_runs[name].append(mf)
            runs[name].append(ms)
            print(f'  end-to-end round {r + 1}: forward only {mf.wall:6.2f} s (cpu {mf.cpu:6.2f}) | '
                  f'{name:34s} {ms.wall:6.2f} s (cpu {ms.cpu:6.2f})', flush=True)
    # peak memory: one run of each, alone
    peaks = {}
    with Measure() as mf:
        forward_only(zoo, probe_cfg)
    peaks['forward only'] = mf.peak_mb
    for name, cfg in phases:
        with Measure() as ms:
            similarity_stage(zoo, probe_cfg, cfg)
        peaks[name] = ms.peak_mb

    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(f'\n== R1: similarity stage / forward-only ({args.rounds} rounds, median) ==')
    head = f'{"phase":36s} {"R1 cpu":>7s} {"R1 wall":>8s}'
    if args.end_to_end:
        head += f' {"e2e cpu":>8s} {"e2e wall":>9s}'
    print(head + f' {"stage cpu s":>12s} {"fwd-only cpu s":>15s} {"peak heap MB":>13s}')
    print(f'{"forward only":36s} {1:7.3f} {1:8.3f}' + (f' {1:8.3f} {1:9.3f}' if args.end_to_end else '')
          + f' {"":>12s} {"":>15s} {peaks["forward only"]:13.1f}')
    for name, _ in phases:
        ps = paired[name]
        line = (f'{name:36s} {med([p["cpu"]["r1"] for p in ps]):7.3f} '
                f'{med([p["wall"]["r1"] for p in ps]):8.3f}')
        if args.end_to_end:
            line += (f' {med([s.cpu / f.cpu for s, f in zip(runs[name], fwd_runs[name])]):8.3f}'
                     f' {med([s.wall / f.wall for s, f in zip(runs[name], fwd_runs[name])]):9.3f}')
        print(line + f' {med([p["cpu"]["stage"] for p in ps]):12.2f} '
              f'{med([p["cpu"]["fwd_only"] for p in ps]):15.2f} {peaks[name]:13.1f}')
    print('(R1: paired in-run measurement; e2e: separate runs, stage / the forward-only run just '
          'before it)')

    if args.memory_scaling:
        print('\n== memory vs probe size, MinibatchCKA store=accumulators ==')
        for k in (1, 4):
            cfg = dict(probe_cfg, num_samples=k * args.samples)
            with Measure() as ms:
                similarity_stage(zoo, cfg, dict(type='MinibatchCKA', store='accumulators'))
            print(f'  {k * args.samples:6d} samples: wall {ms.wall:7.2f} s  peak heap +{ms.peak_mb:7.1f} MB')

    if args.skip_r2:
        return
    # ---------------------------------------------------------------- R2
    wd = tempfile.mkdtemp(prefix='dery_sim_bench_')
    try:
        compute_similarity(zoo, probe_cfg, dict(type='LinearCKA', plot=False, progress=False), wd)
        root = osp.join(wd, 'similarity_cache', 'features')
        feats = {}
        for m in zoo:
            path = [f for f in os.listdir(root) if f.startswith(m.name + '-') and f.endswith('.npy')]
            arr = np.load(osp.join(root, path[0]))
            dims = capture.pooled_dims(m, 'avg')
            offs = np.cumsum([0] + dims)
            feats[m.name] = [torch.from_numpy(np.ascontiguousarray(arr[:, s:e]))
                             for s, e in zip(offs[:-1], offs[1:])]
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    names = [m.name for m in zoo]
    all_feats = [f for n in names for f in feats[n]]
    dims = [f.shape[1] for f in all_feats]
    print(f'\n== R2: per-pair full-Gram CKA loop / LinearCKA on stored features ==')
    print(f'stored pooled features: {len(all_feats)} nodes x {args.samples} samples, dims '
          f'{min(dims)}..{max(dims)} (total {sum(dims)}), float32')
    timings = {}
    for dt in ('float64', 'float32'):
        metric = LinearCKA(dtype=dt)
        best = None
        for _ in range(3):  # the batched metric is short: best of 3 (the loop runs once)
            with Measure() as ms:
                metric.reset()
                metric.update(all_feats)
                ours = metric.compute()
            best = ms if best is None or ms.wall < best.wall else best
        timings[dt] = (best, ours)
    with Measure() as mb:
        base = per_pair_loop(feats, names)
    base_full = torch.cat([torch.cat([base[(a, b)] for b in names], 1) for a in names], 0)
    print(f'{"method":44s} {"wall s":>8s} {"cpu s":>8s} {"peak heap MB":>13s} {"R2 wall":>8s} '
          f'{"R2 cpu":>7s} {"max |diff|":>11s}')
    print(f'{"per-pair loop (original approach, float32)":44s} {mb.wall:8.2f} {mb.cpu:8.2f} '
          f'{mb.peak_mb:13.1f}')
    for dt, (ms, ours) in timings.items():
        diff = (ours.double() - base_full.double()).abs().max().item()
        print(f'{"LinearCKA, all pairs batched (" + dt + ")":44s} {ms.wall:8.2f} {ms.cpu:8.2f} '
              f'{ms.peak_mb:13.1f} {mb.wall / ms.wall:8.1f} {mb.cpu / ms.cpu:7.1f} {diff:11.2e}')


if __name__ == '__main__':
    main()
