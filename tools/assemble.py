"""Stage 3: choose and stitch blocks within the budget (runs partition first if needed).

    python tools/assemble.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch] [--force]

Writes WORK_DIR/assembly.json, assembled.py (standalone mmpretrain config) and
assembled_init.pth (weights taken from the zoo, stitches fitted).
"""
from dery.cli import run, stage_parser


def main():
    args = stage_parser(__doc__).parse_args()
    import time

    from mmengine.dist import barrier, get_rank

    from dery.apis import assemble, partition
    from dery.apis.checks import check_config
    from dery.cli import load_config, print_table, setup_distributed, stage_logger, stage_time_table
    cfg = load_config(args)
    check_config(cfg, 'assembly')  # every config error before any work
    setup_distributed(cfg, args.launcher)
    logger = stage_logger(cfg, 'assemble')
    t0 = time.perf_counter()
    record = None
    if args.launcher != 'none':
        # the similarity stage runs on every rank (reused when partition.json is current); the rest on rank 0
        partition(cfg, cfg.work_dir, launcher=args.launcher, check=False)
    if get_rank() == 0:
        record = assemble(cfg, cfg.work_dir, launcher=args.launcher, force=args.force, check=False)
    barrier()
    if get_rank() == 0:
        print_table(record.table())
        print_table(stage_time_table(cfg.work_dir, ('partition', 'assemble'), wall=time.perf_counter() - t0))
        logger.info(f'assemble stage done in {time.perf_counter() - t0:.1f}s -> {cfg.work_dir}/assembly.json')


if __name__ == '__main__':
    run(main)
