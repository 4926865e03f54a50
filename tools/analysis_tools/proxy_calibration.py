"""Proxy calibration: how well does each training-free proxy rank candidate networks?

    python tools/analysis_tools/proxy_calibration.py CONFIG [CONFIG ...] [--work-dir DIR] [--num-samples 12]
        [--seed 0] [--seeds 0 ...] [--proxies NASWOT LogME ...] [--max-iters N] [--jobs N] [--rerun]
        [--no-plots] [--out FILE.md] [--cfg-options k=v ...]

For each DeRy config: the partition and assembly stages (reused when current), then N feasible
assemblies (the solver's ranked top-M first, then seeded random ones), each built from the zoo with
fitted stitches and scored by every registered proxy, fine-tuned with the config's schedule
(``--max-iters``: a shorter one), and every proxy's Kendall's tau and Spearman's rho against the
fine-tuned top-1, with bootstrap intervals. Writes WORK_DIR/calibration/calibration.md,
calibration.json and scatter_<proxy>.png; finished fine-tunes there are reused. With several configs
(tasks), ``--out`` gets the proxies side by side and the one with the best mean tau.

The demo's configs after ``python tools/demo.py``:
    python tools/analysis_tools/proxy_calibration.py work_dirs/demo/dery_digits.py --work-dir work_dirs/demo/dery
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction

from dery.cli import run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('configs', nargs='+', metavar='CONFIG', help='DeRy config file(s), one per target task')
    p.add_argument('--work-dir', help='work dir (one config only; default: the config\'s, else work_dirs/<stem>)')
    p.add_argument('--num-samples', type=int, help='assemblies to fine-tune (default 12)')
    p.add_argument('--seed', type=int, help='seed of the random assemblies (default 0)')
    p.add_argument('--seeds', type=int, nargs='+', help='fine-tune seeds per assembly (default: 0)')
    p.add_argument('--proxies', nargs='+', help='proxy types (default: every registered proxy)')
    p.add_argument('--max-iters', type=int, help='a shorter fine-tuning schedule (scaled)')
    p.add_argument('--jobs', type=int, default=None, help='parallel training processes (default: CPUs, max 4)')
    p.add_argument('--rerun', action='store_true', help='fine-tune again even when a run is cached')
    p.add_argument('--no-plots', action='store_true', help='no scatter PNGs')
    p.add_argument('--out', help='with several configs: write the side-by-side table here (markdown)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings (all configs)')
    p.add_argument('--debug', action='store_true', help='show the traceback of DeRy errors too')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from dery.errors import ConfigError
    if args.work_dir and len(args.configs) > 1:
        raise ConfigError('--work-dir works with one config; each config uses its own work dir')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    from dery.cli import load_config, stage_logger
    cfgs = []
    for path in args.configs:
        ns = argparse.Namespace(config=path, work_dir=args.work_dir, cfg_options=args.cfg_options)
        cfgs.append(load_config(ns))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    jobs = max(1, args.jobs or min(cpus, 4))
    from dery.calibration import RunPool, combine, combined_markdown
    from dery.calibration.report import agreement_rows, AGREEMENT_COLUMNS, md_table
    # the training processes are forked before this process computes anything
    pool = RunPool(jobs, osp.join(cfgs[0].work_dir, 'calibration', 'logs'), threads=max(1, cpus // jobs))
    import torch
    torch.set_num_threads(max(1, cpus // jobs))
    from dery.apis import calibrate
    from dery.apis.checks import check_config
    for cfg in cfgs:
        check_config(cfg, 'assembly')  # every config error before any work
    records = []
    try:
        for path, cfg in zip(args.configs, cfgs):
            logger = stage_logger(cfg, 'calibration')
            options = dict(num_samples=args.num_samples, seed=args.seed, seeds=args.seeds, proxies=args.proxies,
                           max_iters=args.max_iters)
            rec = calibrate(cfg, cfg.work_dir, executor=pool, rerun=args.rerun, plots=not args.no_plots,
                            log=logger.info, check=False, task=osp.splitext(osp.basename(path))[0], **options)
            records.append(rec)
            print(f'\n{rec["task"]} ({rec["num_samples"]} assemblies): {cfg.work_dir}/calibration/calibration.md')
            print(md_table(AGREEMENT_COLUMNS, agreement_rows(rec)))
    finally:
        pool.terminate()
    if len(records) > 1:
        comb = combine(records)
        text = (f'# Proxy calibration on {len(records)} tasks\n\n{combined_markdown(comb)}\n\n'
                f'Chosen: **{comb["chosen"]}**, by {comb["rule"]}.\n')
        print('\n' + text)
        if args.out:
            from dery.utils import atomic_write
            with atomic_write(args.out, 'w') as f:
                f.write(text)


if __name__ == '__main__':
    run(main)
