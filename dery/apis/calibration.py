"""``calibrate(cfg)``: how well every proxy ranks candidate networks (tools/analysis_tools/proxy_calibration.py)."""
from dery.assembly import run_assembly
from dery.partition.stage import partition_stamp
from dery.utils import get_logger
from .assemble import checked_partition, stage3_inputs


def calibrate(cfg, work_dir=None, zoo=None, executor=None, rerun=False, plots=True, log=None, check=True,
              task=None, **options):
    """Sample feasible assemblies of the config's partition, score them with every proxy, fine-tune them
    with the config's schedule and measure each proxy's rank agreement with the fine-tuned top-1.

    The partition and assembly stages run first when their outputs are not current (as
    :func:`dery.apis.assemble`); finished fine-tunes in ``WORK_DIR/calibration/runs`` are reused.

    Args:
        cfg (str | Config | dict): a DeRy config; ``cfg.calibration`` holds the options (see
            :data:`dery.calibration.DEFAULT_OPTIONS`: ``num_samples`` 12, ``seed``, ``seeds`` of the
            fine-tunes, ``proxies`` (default: every registered one), ``max_iters`` (a shorter schedule),
            ``num_bootstrap``, ``level``, ``include_top_m``).
        work_dir (str | None): default ``cfg.work_dir``, else ``work_dirs/<config stem>``.
        zoo (ZooCache | None): the zoo already built.
        executor (callable | None): ``executor(runs, rerun=..., log=...) -> {run name: result}``;
            default: one run after the other in this process.
        rerun (bool): fine-tune again even when a run's result is cached.
        plots (bool): write the scatter PNGs.
        log (callable | None): progress lines (default: the 'dery' logger).
        check (bool): check the config first.
        task (str | None): the task's name in the tables (default: the target data set's type).
        **options: override ``cfg.calibration``.

    Returns:
        dict: the record written to ``WORK_DIR/calibration/calibration.json`` (with ``calibration.md``
        and ``scatter_<proxy>.png`` beside it).
    """
    from dery.calibration import Calibration, serial_executor
    cfg, zoo, work_dir = stage3_inputs(cfg, work_dir, zoo, check)
    log = log or get_logger().info
    part = checked_partition(cfg, work_dir, zoo)
    assembly = run_assembly(cfg, work_dir, zoo, part, partition_stamp(cfg, zoo))
    calib = Calibration(cfg, work_dir, zoo, part, assembly, task=task, **options).prepare(log)
    results = (executor or serial_executor)(calib.runs, rerun=rerun, log=log)
    return calib.finish(results, plots=plots)
