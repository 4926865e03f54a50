"""Stage 1 + 2: functional similarity, then the cover-set partition."""
import os
import os.path as osp
import time

import torch.distributed as dist

from dery.registry import PARTITIONERS
from dery.utils import atomic_save_json, get_logger, load_json, record_timings
from .common import as_config, build_zoo, work_dir_of, zoo_entries


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def partition(cfg, work_dir=None, launcher='none', force=False, zoo=None):
    """Run the similarity stage (cached) and the partitioner; return ``partition.json``'s dict.

    Writes ``WORK_DIR/partition.json`` and ``WORK_DIR/partition.png``. An
    existing ``partition.json`` made from the same zoo and partitioner settings
    is reused unless ``force``.
    """
    from dery.partition.plot import plot_partition
    from dery.similarity import compute_similarity
    cfg = as_config(cfg)
    work_dir = work_dir or work_dir_of(cfg)
    os.makedirs(work_dir, exist_ok=True)
    logger = get_logger()
    out_path = osp.join(work_dir, 'partition.json')
    entries = zoo_entries(cfg)
    part_cfg = dict(cfg.partitioner)
    stamp = dict(zoo=[e.cache_key() for e in entries.values()], partitioner=part_cfg,
                 similarity=dict(cfg.similarity))
    if osp.isfile(out_path) and not force:
        existing = load_json(out_path, 'partition file')
        if existing.get('config_stamp') == stamp:
            logger.info(f'partition: reusing {out_path}')
            return existing
        logger.info(f'partition: {out_path} was made with other settings; recomputing')
    t0 = time.perf_counter()
    zoo = zoo or build_zoo(cfg, entries)
    models = [zoo[name] for name in entries]
    sim = compute_similarity(models, dict(cfg.probe), dict(cfg.similarity), work_dir, launcher=launcher)
    result = None
    if _rank() == 0:
        partitioner = PARTITIONERS.build(part_cfg)
        node_params = None
        if part_cfg.get('size_limit', 'nodes') == 'params':
            node_params = {m.name: [m.params(i, i) for i in range(len(m.nodes))] for m in models}
        result = partitioner.partition(sim.nodes, sim.matrices, node_params=node_params,
                                       similarity_type=sim.type)
        result['config_stamp'] = stamp
        timing = {k: result.pop(k) for k in ('seconds', 'restart_seconds') if k in result}
        record_timings(work_dir, 'partition', similarity_seconds=round(getattr(sim, 'seconds', 0.0), 3),
                       total_seconds=round(time.perf_counter() - t0, 3), **timing)
        atomic_save_json(result, out_path)
        plot_partition(result, osp.join(work_dir, 'partition.png'))
        logger.info(f'partition: wrote {out_path} (objective {result["objective"]:.4f})')
    _barrier()
    if result is None:
        result = load_json(out_path, 'partition file')
    return result


def partition_table(result):
    """A rich Table: model, blocks as node ranges, set of each block."""
    from rich.table import Table
    k = result['num_sets']
    table = Table(title=f'DeRy partition: K={k}, similarity {result.get("similarity")}, '
                        f'objective {result["objective"]:.4f}, seed {result.get("seed")}')
    table.add_column('model')
    for b in range(k):
        table.add_column(f'block {b}: nodes (set)')
    for name, info in result['models'].items():
        nodes = info['nodes']
        cells = []
        for block in info['blocks']:
            s, e = nodes.index(block['start']), nodes.index(block['end'])
            cells.append(f'{block["start"]}..{block["end"]} [{s}-{e}] (set {block["set"]})')
        table.add_row(name, *cells)
    return table
