"""Stages 1 + 2 end to end: functional similarity of the zoo, then the partitioner.

Writes ``WORK_DIR/partition.json`` (:class:`~dery.partition.Partition`) and
``partition.png``; the similarity stage writes its own outputs and caches
(:func:`dery.similarity.compute_similarity`).
"""
import os.path as osp
import time

from mmengine.dist import barrier, get_rank

from dery.registry import PARTITIONERS
from dery.utils import get_logger, record_timings, to_plain
from dery.utils.stamp import Stamp
from .problem import size_limits
from .record import Partition

__all__ = ['run_partition', 'partition_stamp', 'current_partition', 'VIEW_KEYS']

#: similarity options that change how the stage runs, not what it computes
VIEW_KEYS = ('plot', 'progress', 'checkpoint_interval', 'resume', 'device')


def partition_stamp(cfg, zoo):
    """Everything the partition depends on: the zoo (entries, weights, input size), the probe
    data, the similarity metric and the partitioner (a changed value reruns the stage)."""
    from dery.similarity.capture import probe_identity
    similarity = {k: v for k, v in to_plain(cfg.similarity).items() if k not in VIEW_KEYS}
    return Stamp('partition', dict(zoo=zoo.identity(), probe=probe_identity(to_plain(cfg.probe)),
                                   similarity=similarity, partitioner=to_plain(cfg.partitioner)))


def current_partition(work_dir, stamp):
    """``(Partition or None, why not)``: the work dir's partition when ``stamp`` matches it."""
    path = osp.join(work_dir, 'partition.json')
    if not osp.isfile(path):
        return None, 'no partition.json yet'
    existing = Partition.load(path)
    why = stamp.why_different(existing.stamp)
    return (existing, None) if why is None else (None, why)


def run_partition(cfg, work_dir, zoo, launcher='none', force=False):
    """Similarity (cached) and partition of ``zoo``; write and return the :class:`Partition`.

    An existing ``partition.json`` made from the same inputs is reused unless
    ``force``. The similarity stage runs on every rank (its batches are dealt
    to the ranks); the partitioner on rank 0, the others read its output.
    """
    from dery.similarity import compute_similarity
    from .plot import plot_partition
    logger = get_logger()
    out_path = osp.join(work_dir, 'partition.json')
    stamp = partition_stamp(cfg, zoo)
    if osp.isfile(out_path) and not force:
        existing, why = current_partition(work_dir, stamp)
        if existing is not None:
            logger.info(f'partition: reusing {out_path}')
            return existing
        logger.info(f'partition: {why}; recomputing')
    t0 = time.perf_counter()
    part_cfg = to_plain(cfg.partitioner)
    check = None
    if part_cfg.get('size_limit', 'nodes') == 'nodes':  # num_sets and eps against each model's nodes, before its first forward

        def check(name, nodes):
            size_limits({name: nodes}, part_cfg.get('num_sets', 4), part_cfg.get('eps', 0.2))
    # the similarity stage builds the models one at a time from the ZooCache and releases them
    sim = compute_similarity(zoo, to_plain(cfg.probe), to_plain(cfg.similarity), work_dir, launcher=launcher,
                             on_nodes=check)
    result = None
    if get_rank() == 0:
        partitioner = PARTITIONERS.build(part_cfg)
        node_params = None
        if part_cfg.get('size_limit', 'nodes') == 'params':
            node_params = {}
            for name in zoo.names:
                built = zoo.is_built(name)
                zm = zoo[name]
                node_params[name] = [zm.params(i, i) for i in range(len(zm.nodes))]
                del zm
                if not built:
                    zoo.release(name)
        result = Partition.from_json(partitioner.partition(sim.nodes, sim.matrices, node_params=node_params,
                                                           similarity_type=sim.type))
        result.stamp = stamp.to_json()
        timing = {k: result.settings.pop(k) for k in ('seconds', 'restart_seconds') if k in result.settings}
        steps = {f'similarity_{k}': sim.meta[k] for k in ('build_seconds', 'probe_seconds', 'capture_seconds',
                                                           'metric_seconds', 'plot_seconds') if k in sim.meta}
        record_timings(work_dir, 'partition', similarity_seconds=round(getattr(sim, 'seconds', 0.0), 3), **steps,
                       partitioner_seconds=round(timing.get('seconds', 0.0), 3),
                       total_seconds=round(time.perf_counter() - t0, 3), **timing)
        result.save(out_path)
        plot_partition(result, osp.join(work_dir, 'partition.png'))
        logger.info(f'partition: wrote {out_path} (objective {result.objective:.4f})')
    barrier()
    if result is None:
        result = Partition.load(out_path)
    return result
