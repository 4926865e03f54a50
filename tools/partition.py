"""Stage 1+2: functional similarity of the zoo, then the cover-set partition.

    python tools/partition.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

Writes WORK_DIR/partition.json, partition.png, similarity.npz (+ heatmaps).
"""
import time

from rich.console import Console

from dery.apis import partition, partition_table
from dery.apis.cli import load_config, logger_for, setup_dist, stage_parser


def main():
    args = stage_parser(__doc__).parse_args()
    cfg = load_config(args)
    setup_dist(cfg, args.launcher)
    logger = logger_for(cfg, 'partition')
    t0 = time.perf_counter()
    result = partition(cfg, cfg.work_dir, launcher=args.launcher)
    from mmengine.dist import get_rank
    if get_rank() == 0:
        console = Console(width=max(Console().width, 140))
        console.print(partition_table(result))
        logger.info(f'partition stage done in {time.perf_counter() - t0:.1f}s -> {cfg.work_dir}/partition.json')


if __name__ == '__main__':
    main()
