"""Stage 1+2: functional similarity of the zoo, then the cover-set partition.

    python tools/partition.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch] [--force]

Writes WORK_DIR/partition.json, partition.png, similarity.npz (+ heatmaps).
"""
from dery.cli import run, stage_parser


def main():
    args = stage_parser(__doc__).parse_args()
    import time

    from mmengine.dist import get_rank

    from dery.apis import partition
    from dery.apis.checks import check_config
    from dery.cli import load_config, print_table, setup_distributed, stage_logger, stage_time_table
    cfg = load_config(args)
    check_config(cfg, 'partition')  # every config error before any work
    setup_distributed(cfg, args.launcher)
    logger = stage_logger(cfg, 'partition')
    t0 = time.perf_counter()
    result = partition(cfg, cfg.work_dir, launcher=args.launcher, force=args.force, check=False)
    if get_rank() == 0:
        print_table(result.table())
        print_table(stage_time_table(cfg.work_dir, ('partition', ), wall=time.perf_counter() - t0))
        logger.info(f'partition stage done in {time.perf_counter() - t0:.1f}s -> {cfg.work_dir}/partition.json')


if __name__ == '__main__':
    run(main)
