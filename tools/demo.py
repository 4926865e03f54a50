"""The offline end-to-end DeRy demo: model reuse that pays, on a small CPU machine.

    python tools/demo.py [DEMO_CONFIG] [--work-dir DIR] [--quick] [--jobs N] [--rerun] [--no-progress]

No download, no GPU, no pretrained weights. Stages (configs under configs/demo/,
the code in dery/demo/, one module per stage):

1. data: a formula-driven **source** task (procedurally drawn glyphs, 16
   classes, dery/datasets/procedural.py) and a real **target** task
   (scikit-learn's bundled handwritten digits in random colours, 16x16, only
   150 training images, dery/datasets/digits.py);
2. pretrain: a heterogeneous zoo (ResNet, ViT, Swin, ConvNeXt; different
   widths and depths) trained on the source task with mmengine's Runner, one
   recipe per family (configs/demo/demo.py `pretrain_recipes`),
   saved as plain zoo state dicts in WORK_DIR/zoo/ (cached: a second run
   skips it);
3. partition: functional similarity on target images and the cover-set
   partition (``dery.apis.partition``, as tools/partition.py);
4. assemble: blocks chosen and stitched within a budget below the largest
   zoo model (``dery.apis.assemble``, as tools/assemble.py);
5. fine-tune: with one schedule and the same seeds, the reassembled model
   (the config tools/train.py would run), the same architecture from random
   init, and every zoo model (finished runs are cached too); and the proxy
   calibration (dery.calibration, as tools/analysis_tools/proxy_calibration.py):
   12 assemblies on the digits and 12 on a second task (procedural shapes,
   configs/demo/dery_shapes.py), each scored by every registered proxy and
   fine-tuned, then the best cross-family assembly with more seeds;
6. report: WORK_DIR/report.md (+ results.json, PNG plots), table printed:
   the results (3 seeds each), the calibration tables (Kendall's tau and
   Spearman's rho per proxy, both tasks) and which proxy the solver used.

Training runs go to a pool of worker processes (``--jobs``, default: the CPU
count up to 4) with one torch thread each: on a 2-core machine this is
faster than one process with two threads, and it does not collapse when the
machine is busy. Zoo fine-tunes start while the parent partitions and
assembles. Each worker's console goes to WORK_DIR/logs/, each run's mmengine
log to its own work dir.
"""
import argparse
import os.path as osp

from dery.cli import run

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='DeRy offline end-to-end demo (source pre-training -> partition -> '
                                'assembly -> fine-tuning vs baselines -> report)')
    p.add_argument('config', nargs='?', default=osp.join(ROOT, 'configs', 'demo', 'demo.py'),
                   help='demo settings (default: configs/demo/demo.py)')
    p.add_argument('--work-dir', help='output dir (default: work_dirs/demo)')
    p.add_argument('--quick', action='store_true', help='tiny schedule and one seed (CI smoke test)')
    p.add_argument('--jobs', type=int, default=None, help='parallel training processes (default: CPUs, max 4)')
    p.add_argument('--rerun', action='store_true', help='re-run the fine-tunes even when their results are cached')
    p.add_argument('--no-progress', action='store_true', help='no live progress bars (plain lines only)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from dery.demo import run_demo
    run_demo(args.config, work_dir=args.work_dir, quick=args.quick, jobs=args.jobs, rerun=args.rerun,
             progress=not args.no_progress)


if __name__ == '__main__':
    run(main)
