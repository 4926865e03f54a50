"""Write DeRy's benchmark records from the configs and the runs: metafile, model index, README tables.

    python tools/model_index_stats.py [--work-dirs work_dirs] [--run tiny_cpu ...] [--check]

For every config in configs/dery/ it writes one ``Models`` entry of
configs/dery/metafile.yml (name = config stem, mmpretrain's rule), the root
model-index.yml, and the tables of configs/dery/README.md (between the
``<!-- model-index -->`` markers).

Nothing is typed by hand:

* Parameters and FLOPs are filled only where a run measured them: the
  ``params`` / ``flops`` that tools/assemble.py measured on the built network
  (``WORK_DIR/assembly.json``, WORK_DIR = ``<work-dirs>/<config stem>``).
  ``--run NAME`` runs the partition and assembly stages of those configs first
  (cheap for tiny_cpu; the real zoo needs its weights and a GPU). Everything
  else is left empty.
* Budgets, data set, protocol, schedule and batch come from the configs.
* Accuracies: the measured top-1 where the work dir holds one (the last
  validation ``accuracy/top1`` of the latest training log,
  ``WORK_DIR/<timestamp>/vis_data/scalars.json``), else the paper's figure
  where the paper reports one for that setting, marked ``(paper)``.
"""
import argparse
import os.path as osp

from dery.cli import run

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs', 'dery')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--work-dirs', default='work_dirs', help='folder of the runs: <work-dirs>/<config stem>/')
    p.add_argument('--run', nargs='*', default=[], metavar='NAME',
                   help='run the partition and assembly stages of these configs first (e.g. tiny_cpu)')
    p.add_argument('--configs', default=CONFIG_DIR, help='the config folder')
    p.add_argument('--metafile', default=osp.join(CONFIG_DIR, 'metafile.yml'))
    p.add_argument('--readme', default=osp.join(CONFIG_DIR, 'README.md'))
    p.add_argument('--model-index', default=osp.join(ROOT, 'model-index.yml'))
    p.add_argument('--check', action='store_true', help='write nothing; exit 1 when a file would change')
    args = p.parse_args(argv)
    from dery.apis import assemble
    from dery.model_index import stats
    from dery.utils import as_config

    for name in args.run:  # the partition and assembly stages first (reused when current)
        cfg = as_config(stats.config_of(name, args.configs))
        cfg.work_dir = osp.join(args.work_dirs, name)
        assemble(cfg, cfg.work_dir)
    rows = stats.collect(args.configs, args.work_dirs)
    changed = stats.write(stats.outputs(rows, args.metafile, args.readme, args.model_index), check=args.check)
    print(stats.summary(rows, args.work_dirs))
    if args.check and changed:
        print('out of date: ' + ', '.join(osp.relpath(c, ROOT) for c in changed))
        return 1
    if not args.check:
        print('wrote ' + (', '.join(osp.relpath(c, ROOT) for c in changed) or 'nothing (up to date)'))
    return 0


if __name__ == '__main__':
    run(main)
