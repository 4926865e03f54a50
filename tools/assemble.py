"""Stage 3: choose and stitch blocks within the budget (runs partition first if needed).

    python tools/assemble.py CONFIG [--work-dir DIR] [--cfg-options k=v ...]

Writes WORK_DIR/assembly.json, assembled.py (standalone mmpretrain config) and
assembled_init.pth (weights taken from the zoo, stitches fitted).
"""
import time

from rich.console import Console

from dery.apis import assemble
from dery.apis.assemble import assembly_table
from dery.apis.cli import load_config, logger_for, setup_dist, stage_parser


def main():
    parser = stage_parser(__doc__)
    parser.add_argument('--force', action='store_true', help='recompute even if assembly.json is current')
    args = parser.parse_args()
    cfg = load_config(args)
    setup_dist(cfg, args.launcher)
    logger = logger_for(cfg, 'assemble')
    t0 = time.perf_counter()
    from mmengine.dist import barrier, get_rank
    record = None
    if args.launcher != 'none':
        # the similarity stage runs on every rank (reused when partition.json is current); the rest on rank 0
        from dery.apis import partition
        partition(cfg, cfg.work_dir, launcher=args.launcher)
    if get_rank() == 0:
        record = assemble(cfg, cfg.work_dir, launcher=args.launcher, force=args.force)
    barrier()
    if get_rank() == 0:
        Console(width=max(Console().width, 140)).print(assembly_table(record))
        logger.info(f'assemble stage done in {time.perf_counter() - t0:.1f}s -> {cfg.work_dir}/assembly.json')


if __name__ == '__main__':
    main()
