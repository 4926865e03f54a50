"""The demo end to end: :func:`run_demo`, the six stages in order."""
import os
import os.path as osp
import signal
import time

from .config import demo_logger, load_demo, machine, setup_process, stage_configs
from .data import data_note, describe_data
from .finetune import FineTunes
from .jobs import Pool
from .pretrain import pretrain_summary, pretrain_zoo, use_pretrained_zoo
from .report import PLOTS, collect_results, plot_curves, print_summary, write_report
from .ui import UI

__all__ = ['run_demo']


def _terminate(signum, frame):  # `kill PID`: stop the workers too
    raise SystemExit(128 + signum)


def run_demo(config, work_dir=None, quick=False, jobs=None, rerun=False, progress=True):
    """Run the demo of ``config`` (configs/demo/demo.py) in ``work_dir``; the results dict (results.json).

    ``quick``: the config's reduced schedule and seeds; ``jobs``: training processes (default: the CPU
    cores up to 4); ``rerun``: train the fine-tunes again even when cached; ``progress``: live bars.
    """
    t_start = time.perf_counter()
    setup_process()
    import torch
    from mmengine.registry import init_default_scope

    from dery.apis import assemble, partition
    from dery.errors import DeryError
    from dery.utils import atomic_save_json

    demo = load_demo(config, quick, work_dir)
    root = demo.work_dir
    os.makedirs(root, exist_ok=True)
    mach = machine(jobs)
    torch.set_num_threads(mach['threads_per_job'])
    logger = demo_logger(demo)
    init_default_scope('dery')
    pre_base, dery_cfg = stage_configs(demo)

    pool = Pool(root, mach['jobs'], mach['threads_per_job'])  # forked now, before any thread starts
    signal.signal(signal.SIGTERM, _terminate)
    ui = UI(progress, logger, pool.counters)
    command = 'python tools/demo.py' + (' --quick' if quick else '') + (f' --work-dir {work_dir}' if work_dir else '')
    stages = []
    try:
        with ui:
            ui.log(f'DeRy demo: work dir {root}; {mach["cpus"]} CPU cores, {mach["jobs"]} training processes x '
                   f'{mach["threads_per_job"]} thread(s){"; QUICK mode" if quick else ""}')
            # 1. data
            t0 = time.perf_counter()
            data_info = describe_data(ui, demo, pre_base, dery_cfg)
            ui.stage_done(stages, 'data', '1/6 data', t0, data_note(data_info))

            # 2. zoo pre-training
            t0 = time.perf_counter()
            zoo = pretrain_zoo(ui, pool, pre_base, dery_cfg, root)
            ui.stage_done(stages, 'pretrain', '2/6 pretrain', t0, zoo.note, pretrain_summary(zoo))
            use_pretrained_zoo(dery_cfg, zoo, root)

            # 5a. the zoo fine-tunes start now, in the workers, while this process partitions and assembles
            ft = FineTunes(ui, pool, demo, dery_cfg, root, rerun)
            ft.start_zoo(zoo)

            # 3. similarity + partition
            t0 = time.perf_counter()
            st = ui.stage_task('partition', '[3/6] similarity + partition', None)
            part = partition(dery_cfg, dery_cfg.work_dir).to_json()
            ui.progress.update(st, total=1, completed=1)
            ui.stage_done(stages, 'partition', '3/6 similarity + partition', t0,
                          f'K={part["num_sets"]}, objective {part["objective"]:.4f}')

            # 4. assembly
            t0 = time.perf_counter()
            st = ui.stage_task('assemble', '[4/6] assemble', None)
            assembly = assemble(dery_cfg, dery_cfg.work_dir)
            record = assembly.to_json()
            ui.progress.update(st, total=1, completed=1)
            note = f'{record["params"] / 1e6:.3f}M params, {record["flops"] / 1e6:.1f}M FLOPs'
            ui.stage_done(stages, 'assemble', '4/6 assemble', t0, note, f'{note}: {assembly.describe()}')

            # 5b. the reassembled model and its baselines; every run collected
            ft.start_reassembled(assembly, zoo)
            note = ft.wait()
            pool.close()
            ui.stage_done(stages, 'fine-tune', '5/6 fine-tune', ft.t0, note)

            # 6. report
            t0 = time.perf_counter()
            st = ui.stage_task('report', '[6/6] report', 1)
            results = collect_results(command=command, quick=quick, work_dir=root, machine=mach,
                                      data_info=data_info, zoo=zoo, part=part, record=record, ft=ft, demo=demo,
                                      dery_cfg=dery_cfg, stages=stages)
            plot_curves(results, osp.join(root, PLOTS['curves']))
            for key in ('similarity', 'partition'):
                if not osp.isfile(osp.join(root, PLOTS[key])):
                    raise DeryError(f'the {key} plot {PLOTS[key]} is missing in {root}')
            ui.stage_done(stages, 'report', '6/6 report', t0, 'report.md, results.json, PNGs', detail='')
            results['seconds_total'] = round(time.perf_counter() - t_start, 1)
            atomic_save_json(results, osp.join(root, 'results.json'))
            write_report(results, osp.join(root, 'report.md'))
            ui.progress.update(st, completed=1)
    except BaseException:
        pool.terminate()
        raise
    print_summary(ui.console, results, osp.join(root, 'report.md'))
    return results
