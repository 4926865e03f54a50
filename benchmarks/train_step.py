"""Training-step overhead of a ReassembledBackbone: stitches and bookkeeping vs the bare blocks.

    python benchmarks/train_step.py [--preset r50_swin] [--batch 4] [--size 224] [--repeats 7]

Builds a realistic assembly from random-init zoo models (no weights, no data):
``r50_swin`` is the paper's CIFAR-100 hybrid, ResNet-50 stages 1-2 + Swin-T stages 3-4 (a
cnn->swin stitch); ``swin_r50`` is the reverse (swin->cnn); ``r50_vit`` feeds ViT-S blocks from
ResNet-50 stages 1-2 (cnn->vit). Two networks, same head (GAP + linear, cross-entropy), same
batch, AdamW, one training step = forward + backward + optimizer step:

* ``reassembled``: the ReassembledBackbone (stem, blocks, stitch layers, output norm, its
  forward loop);
* ``bare``: a deep copy of the same stem, blocks and output norm called back to back, with a
  parameter-free shape adapter where a stitch sits (layout change, channel slice or zero pad,
  stride-s subsampling, zero prefix tokens).

The difference is what the stitches and the backbone's bookkeeping cost. The two are timed
interleaved (A B B A ...) after a warm-up, by process CPU time on one thread (a shared machine
barely disturbs it; ``--clock wall`` for wall time); the report gives the ratio of the medians
and, beside it, the median of the per-pair ratios. Target: overhead <= 5% of the step. With
``--source NAME`` a whole zoo model (e.g. swin_tiny_in1k, the nearest source model of r50_swin at
equal params) is timed too.
"""
import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    'r50_swin': [dict(model='resnet50_in1k', start=0, end=6), dict(model='swin_tiny_in1k', start=4, end=11)],
    'swin_r50': [dict(model='swin_tiny_in1k', start=0, end=3), dict(model='resnet50_in1k', start=7, end=15)],
    'r50_vit': [dict(model='resnet50_in1k', start=0, end=6), dict(model='vit_small_in21k', start=6, end=11)],
}


class FreeAdapter(nn.Module):
    """Parameter-free reshaping of one block's output into the next block's input shape."""

    def __init__(self, src, dst):
        super().__init__()
        self.src, self.dst = src, dst  # TensorSpecs (dery.zoo.layout)
        self.c, self.h = dst.channels, dst.grid[0]

    def forward(self, x):
        x, _ = self.src.to_map(x)
        if x.shape[2] != self.h:
            s = max(1, x.shape[2] // self.h)
            x = x[:, :, ::s, ::s][:, :, :self.h, :self.h]
        c = x.shape[1]
        x = x[:, :self.c] if c >= self.c else F.pad(x, (0, 0, 0, 0, 0, self.c - c))
        prefix = None
        if self.dst.prefix_tokens:
            prefix = x.new_zeros(x.shape[0], self.dst.prefix_tokens, self.c)
        return self.dst.from_map(x.contiguous(), prefix).contiguous()


class Bare(nn.Module):
    """The backbone's stem, blocks and output norm back to back, free adapters between blocks."""

    def __init__(self, bb):
        super().__init__()
        bb = copy.deepcopy(bb)
        self.stem, self.blocks = bb.stem, bb.blocks
        self.adapters = nn.ModuleList()
        for k in range(1, len(bb.blocks)):
            if isinstance(bb.stitches[k - 1], nn.Identity):
                self.adapters.append(nn.Identity())
            else:
                self.adapters.append(FreeAdapter(bb.out_specs[k - 1], bb.in_specs[k]))
        last = len(bb.blocks) - 1
        self.norm = bb.out_norms[str(last)] if str(last) in bb.out_norms else nn.Identity()
        self.out_spec = bb.out_specs[last]

    def forward(self, x):
        x = self.blocks[0](self.stem(x))
        for adapter, block in zip(self.adapters, self.blocks[1:]):
            x = block(adapter(x))
        return (self.out_spec.to_nchw(self.norm(x)), )


class Classifier(nn.Module):
    def __init__(self, backbone, channels, num_classes=100):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(channels, num_classes)

    def forward(self, x):
        feat = self.backbone(x)[-1]
        return self.fc(feat.mean((2, 3)))


class SourceModel(nn.Module):
    """A whole zoo model (its stem and every node) with the same head."""

    def __init__(self, zm):
        super().__init__()
        self.stem, self.body = zm.stem(), zm.cut(0, len(zm.nodes) - 1)
        self.out_spec = zm.out_spec(-1)
        self.channels = self.out_spec.channels
        self.norm = nn.LayerNorm(self.channels) if zm.family != 'cnn' else nn.Identity()

    def forward(self, x):
        return (self.out_spec.to_nchw(self.norm(self.body(self.stem(x)))), )


def step_fn(model, x, y):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def timed(fn):
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='r50_swin')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=7, help='timed steps per network (interleaved)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (default 1: CPU time then measures the work, not the scheduler)')
    p.add_argument('--clock', choices=['cpu', 'wall'], default='cpu',
                   help='what the ratio uses: process CPU time (robust on a shared machine) or wall time')
    p.add_argument('--source', default=None, help='also time this whole zoo model (e.g. swin_tiny_in1k)')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dery.models import ReassembledBackbone
    from dery.zoo import ZooCache
    from dery.zoo.analysis import count_params

    t_build = time.perf_counter()
    torch.manual_seed(0)
    size = (3, args.size, args.size)
    cache = ZooCache(None, pretrained=False, input_size=size)
    bb = ReassembledBackbone(PRESETS[args.preset], zoo=cache, stitch_init='random')
    ch = bb.out_specs[-1].channels
    nets = {'reassembled': Classifier(bb, ch), 'bare': Classifier(Bare(bb), ch)}
    if args.source:
        src = SourceModel(cache[args.source])
        nets['source'] = Classifier(src, src.channels)
    x = torch.randn(args.batch, *size)
    y = torch.randint(0, 100, (args.batch, ))
    steps = {k: step_fn(m.train(), x, y) for k, m in nets.items()}
    build_s = time.perf_counter() - t_build

    stitch_params = sum(count_params(s) for s in bb.stitches)
    print(f'preset {args.preset}: ' + ' -> '.join(f"{s['model']}[{s['start']}..{s['end']}]" for s in bb.specs))
    print(f'batch {args.batch} x {size}, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'build {build_s:.1f}s')
    for name, m in nets.items():
        print(f'  {name:12s} {count_params(m) / 1e6:8.3f}M params')
    print(f'  stitches     {stitch_params / 1e6:8.3f}M params')

    order = list(steps)
    for _ in range(args.warmup):
        for k in order:
            steps[k]()
    walls, cpus = {k: [] for k in order}, {k: [] for k in order}
    for r in range(args.repeats):
        seq = order if r % 2 == 0 else order[::-1]  # A B, B A, ...: drift hits both alike
        for k in seq:
            w, c = timed(steps[k])
            walls[k].append(w)
            cpus[k].append(c)
    times = cpus if args.clock == 'cpu' else walls
    med = {k: statistics.median(v) for k, v in times.items()}
    # the ratio of the medians (each robust to the heavy-tailed step noise of a shared machine);
    # the median of the per-pair ratios (robust to slow drift) is printed beside it
    ratio = med['reassembled'] / med['bare']
    pairs = [a / b for a, b in zip(times['reassembled'], times['bare'])]
    pair = statistics.median(pairs)
    q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pair, pair, pair)
    for k in order:
        print(f'  {k:12s} step median {args.clock} {med[k] * 1e3:8.1f} ms  (min {min(times[k]) * 1e3:.1f}, '
              f'max {max(times[k]) * 1e3:.1f}, n={len(times[k])}; wall median '
              f'{statistics.median(walls[k]) * 1e3:.1f} ms)')
    overhead = ratio - 1
    print(f'reassembled / bare ({args.clock} time): {ratio:.4f} (ratio of medians; median of per-pair ratios '
          f'{pair:.4f}, quartiles {q1:.3f}..{q3:.3f}) -> stitch + bookkeeping overhead {overhead * 100:+.2f}% '
          f'of the step (target <= 5%): {"OK" if overhead <= 0.05 else "ABOVE TARGET"}')
    if 'source' in med:
        print(f'reassembled / {args.source}: {med["reassembled"] / med["source"]:.4f} (ratio of medians)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
