"""The demo end to end: :func:`run_demo`, the six stages in order."""
import os
import os.path as osp
import signal
import time

from .config import demo_logger, load_demo, machine, setup_process, stage_configs, task_configs
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
    from dery.calibration import Calibration, combine
    from dery.errors import DeryError
    from dery.utils import atomic_save_json
    from dery.zoo import ZooCache

    demo = load_demo(config, quick, work_dir)
    root = demo.work_dir
    os.makedirs(root, exist_ok=True)
    mach = machine(jobs)
    torch.set_num_threads(mach['threads_per_job'])
    logger = demo_logger(demo)
    init_default_scope('dery')
    pre_base, dery_cfg = stage_configs(demo)
    tasks = task_configs(demo)
    calib_opts = {k: v for k, v in dict(demo.get('calibration') or {}).items() if k != 'tasks'}

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
            data_info = describe_data(ui, demo, pre_base, dery_cfg, tasks)
            ui.stage_done(stages, 'data', '1/6 data', t0, data_note(data_info))

            # 2. zoo pre-training
            t0 = time.perf_counter()
            zoo = pretrain_zoo(ui, pool, demo, pre_base, dery_cfg, root)
            ui.stage_done(stages, 'pretrain', '2/6 pretrain', t0, zoo.note, pretrain_summary(zoo))
            use_pretrained_zoo(dery_cfg, zoo, root)
            for stem, cfg in tasks:
                use_pretrained_zoo(cfg, zoo, root, stem)
            zoo_cache = ZooCache.from_config(dery_cfg.zoo)  # built once, shared by the digits stages

            # 5a. the zoo fine-tunes start now, in the workers, while this process partitions and assembles
            ft = FineTunes(ui, pool, demo, dery_cfg, root, rerun)
            ft.start_zoo(zoo)

            # 3. similarity + partition
            t0 = time.perf_counter()
            st = ui.stage_task('partition', '[3/6] similarity + partition', None)
            part_rec = partition(dery_cfg, dery_cfg.work_dir, zoo=zoo_cache)
            part = part_rec.to_json()
            ui.progress.update(st, total=1, completed=1)
            ui.stage_done(stages, 'partition', '3/6 similarity + partition', t0,
                          f'K={part["num_sets"]}, objective {part["objective"]:.4f}')

            # 4. assembly
            t0 = time.perf_counter()
            st = ui.stage_task('assemble', '[4/6] assemble', None)
            assembly = assemble(dery_cfg, dery_cfg.work_dir, zoo=zoo_cache)
            record = assembly.to_json()
            ui.progress.update(st, total=1, completed=1)
            note = f'{record["params"] / 1e6:.3f}M params, {record["flops"] / 1e6:.1f}M FLOPs'
            ui.stage_done(stages, 'assemble', '4/6 assemble', t0, note, f'{note}: {assembly.describe()}')

            # 5b. the reassembled model and its baselines; the calibration's assemblies on both tasks
            ft.start_reassembled(assembly, zoo)
            t0 = time.perf_counter()
            calibs = {'digits': Calibration(dery_cfg, dery_cfg.work_dir, zoo_cache, part_rec, assembly,
                                            task='digits', **calib_opts).prepare(ui.log)}
            ft.start_calibration('digits', calibs['digits'], reuse_dery=True)
            for stem, cfg in tasks:
                name = stem[len('dery_'):] if stem.startswith('dery_') else stem
                # its own zoo, as a run of the task alone builds it (the stages leave state in the models)
                task_zoo = ZooCache.from_config(cfg.zoo)
                task_part = partition(cfg, cfg.work_dir, zoo=task_zoo)
                task_asm = assemble(cfg, cfg.work_dir, zoo=task_zoo)
                ui.log(f'{name}: partition K={task_part.num_sets}, assembly {task_asm.describe()}')
                calibs[name] = Calibration(cfg, cfg.work_dir, task_zoo, task_part, task_asm, task=name,
                                           **calib_opts).prepare(ui.log)
                ft.start_calibration(name, calibs[name])
            calib_seconds = time.perf_counter() - t0
            ft.wait_calibration('digits')
            cross = ft.start_cross_family(calibs['digits'], 'digits')
            ui.log('best cross-family assembly of the digits calibration: '
                   + ('none sampled' if cross is None else cross.name))
            note = ft.wait()
            pool.close()
            ui.stage_done(stages, 'fine-tune', '5/6 fine-tune', ft.t0, note)

            # 6. report
            t0 = time.perf_counter()
            st = ui.stage_task('report', '[6/6] report', 1)
            cal_records = {task: c.finish(ft.calibration_results(task)) for task, c in calibs.items()}
            combined = combine(list(cal_records.values()))
            results = collect_results(command=command, quick=quick, work_dir=root, machine=mach,
                                      data_info=data_info, zoo=zoo, part=part, record=record, ft=ft, demo=demo,
                                      dery_cfg=dery_cfg, stages=stages, calibration=cal_records,
                                      combined=combined, calib_seconds=calib_seconds)
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
