"""The offline end-to-end DeRy demo: model reuse that pays, on a small CPU machine.

    python tools/demo.py [DEMO_CONFIG] [--work-dir DIR] [--quick] [--jobs N] [--rerun] [--no-progress]

No download, no GPU, no pretrained weights. Stages (configs under configs/demo/):

1. data: a formula-driven **source** task (procedurally drawn glyphs, 16
   classes, dery/datasets/procedural.py) and a real **target** task
   (scikit-learn's bundled handwritten digits in random colours, 16x16, only
   150 training images, dery/datasets/digits.py);
2. pretrain: a heterogeneous zoo (ResNet, ViT, Swin, ConvNeXt; different
   widths and depths) trained on the source task with mmengine's Runner,
   saved as plain zoo state dicts in WORK_DIR/zoo/ (cached: a second run
   skips it);
3. partition: functional similarity on target images and the cover-set
   partition (``dery.apis.partition``, as tools/partition.py);
4. assemble: blocks chosen and stitched within a budget below the largest
   zoo model (``dery.apis.assemble``, as tools/assemble.py);
5. fine-tune: with one schedule and the same seeds, the reassembled model
   (the config tools/train.py would run), the same architecture from random
   init, and every zoo model (finished runs are cached too);
6. report: WORK_DIR/report.md (+ results.json, PNG plots), table printed.

Training runs go to a pool of worker processes (``--jobs``, default: the CPU
count up to 4) with one torch thread each: on a 2-core machine this is
faster than one process with two threads, and it does not collapse when the
machine is busy. Zoo fine-tunes start while the parent partitions and
assembles. Each worker's console goes to WORK_DIR/logs/, each run's mmengine
log to its own work dir.
"""
import argparse
import copy
import hashlib
import json
import multiprocessing as mp
import os
import os.path as osp
import signal
import sys
import threading
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STAGES = ('data', 'pretrain', 'partition', 'assemble', 'fine-tune', 'report')

# shared iteration counters (one slot per training run), set up before the pool forks
_COUNTERS = None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='DeRy offline end-to-end demo (source pre-training -> partition -> '
                                'assembly -> fine-tuning vs baselines -> report)')
    p.add_argument('config', nargs='?', default=osp.join(ROOT, 'configs', 'demo', 'demo.py'),
                   help='demo settings (default: configs/demo/demo.py)')
    p.add_argument('--work-dir', help='output dir (default: work_dirs/demo)')
    p.add_argument('--quick', action='store_true', help='tiny schedule and one seed (CI smoke test)')
    p.add_argument('--jobs', type=int, default=None, help='parallel training processes (default: CPUs, max 4)')
    p.add_argument('--rerun', action='store_true', help='re-run the fine-tunes even when their results are cached')
    p.add_argument('--no-progress', action='store_true', help='no live progress bars (plain lines only)')
    return p.parse_args(argv)


def digest(obj, n=12):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def plain(obj):
    from dery.apis.common import _plain
    return _plain(obj)


# ---------------------------------------------------------------------------- worker side
def _worker_init(log_dir, threads):
    """Each worker: one torch thread pool of ``threads``, its console into a log file, Ctrl-C to the parent."""
    import torch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    os.makedirs(log_dir, exist_ok=True)
    f = open(osp.join(log_dir, f'worker_{os.getpid()}.log'), 'a', buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    # The Runner formats its config with yapf (log + dump): ~1 s per call, several calls per run, more
    # than a demo fine-tune's training. The text stays valid Python, only unformatted.
    import mmengine.config.config as mmcfg
    mmcfg.FormatCode = lambda text, *a, **k: (text, False)


def _run_job(job):
    """One training run with mmengine's Runner (what tools/train.py does), in a worker process."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from dery.apis.demo import SharedCounterHook, export_zoo_weights, find_scalars, read_scalars
    from dery.utils import atomic_save_json
    t0 = time.perf_counter()
    print(f'=== {job["name"]}', flush=True)
    cfg = Config(copy.deepcopy(job['cfg']))
    cfg.work_dir = job['work_dir']
    cfg.experiment_name = job['name']
    runner = Runner.from_cfg(cfg)
    runner.register_hook(SharedCounterHook(_COUNTERS, job['slot']))
    runner.train()
    scalars = find_scalars(runner.log_dir)
    curve = read_scalars(scalars)
    if not curve['top1'] or curve['top1'][-1][0] != cfg.train_cfg.max_iters:
        raise RuntimeError(f'{job["name"]}: no test accuracy at the last iteration in {scalars}')
    out = dict(name=job['name'], kind=job['kind'], key=job['key'], seed=job.get('seed'),
               top1=curve['top1'][-1][1], curve=curve, scalars=osp.relpath(scalars, job['root']),
               max_iters=cfg.train_cfg.max_iters)
    if job.get('export'):
        export_zoo_weights(runner.model.backbone, job['export']['entry'], job['export']['path'],
                           job['export']['input_size'])
    out['seconds'] = round(time.perf_counter() - t0, 2)
    atomic_save_json(out, job['result_file'])
    _COUNTERS[job['slot']] = -1
    del runner
    return out


# ---------------------------------------------------------------------------- parent side
class UI:
    """rich progress bars (one per running training job, one per stage) and one line per stage."""

    def __init__(self, enabled, logger):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.logger = logger
        probe = Console()
        # piped (CI, tee): no line wrapping, wide tables
        self.console = Console(highlight=False, soft_wrap=True, width=None if probe.is_terminal else 160)
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn('{task.description:<34}'), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, disable=not self.enabled, transient=False)
        self.jobs = {}  # slot -> dict(task, total, done, stage)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.stage_tasks = {}

    def __enter__(self):
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self._refresh()
        self.progress.stop()

    def log(self, msg):
        stamp = time.strftime('%H:%M:%S')
        self.console.print(f'{stamp} - demo - INFO - {msg}')
        self.logger.info(msg)

    def stage_task(self, stage, desc, total):
        task = self.progress.add_task(desc, total=total)
        self.stage_tasks[stage] = task
        return task

    def add_job(self, slot, name, total, stage):
        with self.lock:
            self.jobs[slot] = dict(name=name, total=total, task=None, stage=stage, last=0)

    def _refresh(self):
        with self.lock:
            for slot, j in self.jobs.items():
                n = _COUNTERS[slot]
                if n == 0 and j['task'] is None:
                    continue
                if j['task'] is None and n != 0:
                    j['task'] = self.progress.add_task(f'  {j["name"]}', total=j['total'])
                done = j['total'] if n < 0 else n
                if done != j['last']:
                    self.progress.update(j['task'], completed=done)
                    st = self.stage_tasks.get(j['stage'])
                    if st is not None:
                        self.progress.advance(st, done - j['last'])
                    j['last'] = done
                if n < 0 and j['task'] is not None and not j.get('removed'):
                    self.progress.remove_task(j['task'])
                    j['removed'] = True

    def _poll(self):
        while not self._stop.wait(0.25):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - never kill the run for a progress bar
                pass


def set_schedule(cfg, iters, eval_interval, warmup):
    """``max_iters`` with a linear warm-up then cosine to the end; test accuracy every ``eval_interval``."""
    warmup = max(1, min(int(warmup), iters - 1))
    cfg.train_cfg = dict(by_epoch=False, max_iters=int(iters), val_interval=int(eval_interval))
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
        dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=int(iters), T_max=int(iters) - warmup,
             eta_min=1e-5),
    ]
    if iters % eval_interval:
        raise SystemExit(f'error: eval_interval {eval_interval} must divide the iterations {iters}')


def zoo_classifier_backbone(entry, zm, pretrained):
    """The zoo model as DeRy sees it: its stem and all its nodes, one ReassembledBackbone block."""
    return dict(type='ReassembledBackbone', blocks=[dict(model=entry['name'], start=zm.nodes[0], end=zm.nodes[-1])],
                zoo=[entry], pretrained=pretrained, input_size=tuple(zm.input_size), stem='source',
                stitch_init='random')


def out_channels(zm):
    shape = zm.shapes(len(zm.nodes) - 1)[1]
    return int(shape[0] if zm.family == 'cnn' else shape[-1])


def complexity(model_cfg, data_preprocessor, input_size):
    from dery.models import model_complexity
    from dery.registry import MODELS
    model = MODELS.build(dict(copy.deepcopy(plain(model_cfg)), data_preprocessor=plain(data_preprocessor)))
    return model_complexity(model, tuple(input_size))


class Pool:
    """Worker processes (forked once, before any thread starts) running :func:`_run_job`."""

    def __init__(self, jobs, log_dir, threads):
        ctx = mp.get_context('fork')
        self.pool = ctx.Pool(jobs, initializer=_worker_init, initargs=(log_dir, threads))
        self.log_dir = log_dir
        self.pids = self._pids()
        self.pending = []

    def _pids(self):
        return {p.pid for p in getattr(self.pool, '_pool', [])}

    def submit(self, job):
        res = self.pool.apply_async(_run_job, (job, ))
        self.pending.append((job, res))
        return res

    def wait(self, results, ui):
        """Collect every submitted job (in completion order); log one line per finished run."""
        todo = list(self.pending)
        self.pending = []
        while todo:
            for job, res in list(todo):
                if res.ready():
                    todo.remove((job, res))
                    try:
                        out = res.get()
                    except Exception as e:
                        raise SystemExit(f'error: training run {job["name"]} failed ({type(e).__name__}: {e}); '
                                         f'see the logs under {job["work_dir"]} and {self.log_dir}/') from e
                    results[job['name']] = out
                    ui.log(f'  {job["desc"]}: top-1 {out["top1"]:.2f}% ({out["seconds"]:.1f} s)')
            if todo and self._pids() != self.pids:  # workers live until close(): one was killed
                raise SystemExit('error: a training worker process died (killed, or out of memory?) while '
                                 f'running {", ".join(j["name"] for j, _ in todo)}; see {self.log_dir}/')
            time.sleep(0.2)

    def close(self):
        self.pool.close()
        self.pool.join()

    def terminate(self):
        self.pool.terminate()
        self.pool.join()


def cached_result(job, rerun):
    if rerun or not osp.isfile(job['result_file']):
        return None
    try:
        with open(job['result_file']) as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    if out.get('key') != job['key'] or not osp.isfile(osp.join(job['root'], out.get('scalars', ''))):
        return None
    return out


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    import warnings
    warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(1)
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import dery  # noqa: F401
    import dery.datasets  # noqa: F401  (registers the demo data sets before the workers fork)
    import dery.models  # noqa: F401
    try:  # the target data (scikit-learn's digits) read once here, shared by the forked workers
        from dery.datasets.digits import load_digits_arrays
        load_digits_arrays()
    except ImportError as e:
        raise SystemExit(f'error: {e}') from None
    from dery.apis import assemble, partition, resolve_model_cfg
    from dery.apis.assemble import backbone_cfg
    from dery.apis.demo import mean_std, plot_curves, results_table, write_report
    from dery.utils import atomic_save_json, file_digest, load_json
    from dery.datasets.procedural import _FORMAT as glyph_format
    from dery.zoo import build_zoo_model

    if not osp.isfile(args.config):
        raise SystemExit(f'error: demo config not found: {args.config}')
    demo = Config.fromfile(args.config)
    if args.quick:
        demo.merge_from_dict(dict(demo.quick))
    cfg_dir = osp.dirname(osp.abspath(args.config))
    work_dir = osp.abspath(args.work_dir or demo.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    jobs = max(1, args.jobs or min(cpus, 4))
    threads = max(1, cpus // jobs)
    torch.set_num_threads(threads)

    stamp = time.strftime('%Y%m%d_%H%M%S')
    logger = MMLogger.get_instance('dery', logger_name='dery', log_file=osp.join(work_dir, f'demo_{stamp}.log'),
                                   log_level='INFO')
    import logging
    for h in logger.handlers:  # INFO into the file; the console shows the progress and stage lines
        if type(h) is logging.StreamHandler:
            h.setLevel(logging.WARNING)
    init_default_scope('dery')

    pre_base = Config.fromfile(osp.join(cfg_dir, demo.pretrain_config))
    dery_cfg = Config.fromfile(osp.join(cfg_dir, demo.dery_config))
    if demo.get('pretrain_options'):
        pre_base.merge_from_dict(dict(demo.pretrain_options))
    if demo.get('dery_options'):
        dery_cfg.merge_from_dict(dict(demo.dery_options))
    data_dir = osp.join(work_dir, 'data')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pre_base[key].dataset.cache_dir = data_dir
    set_schedule(pre_base, demo.pretrain_iters, demo.pretrain_iters, demo.warmup_iters * 2)
    set_schedule(dery_cfg, demo.finetune_iters, demo.eval_interval, demo.warmup_iters)
    dery_cfg.work_dir = osp.join(work_dir, 'dery')

    global _COUNTERS
    _COUNTERS = mp.get_context('fork').Array('i', 256, lock=False)
    pool = Pool(jobs, osp.join(work_dir, 'logs'), max(1, cpus // jobs))

    def _terminate(signum, frame):  # `kill PID`: stop the workers too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    stages, runs = [], {}
    slot = [0]

    def next_slot():
        slot[0] += 1
        if slot[0] >= len(_COUNTERS):
            raise RuntimeError('too many training runs for the progress counters')
        return slot[0]

    def job_for(name, kind, desc, cfg, run_dir, key_extra, seed=None, export=None):
        cfgd = plain(cfg._cfg_dict) if hasattr(cfg, '_cfg_dict') else plain(cfg)
        cfgd.pop('work_dir', None)
        return dict(name=name, kind=kind, desc=desc, cfg=cfgd, work_dir=run_dir, seed=seed, export=export,
                    result_file=osp.join(run_dir, 'demo_result.json'), root=work_dir, slot=next_slot(),
                    key=digest(dict(cfg=cfgd, extra=key_extra)))

    ui = UI(not args.no_progress, logger)
    command = 'python tools/demo.py' + (' --quick' if args.quick else '') + \
        (f' --work-dir {args.work_dir}' if args.work_dir else '')
    try:
        with ui:
            ui.log(f'DeRy demo: work dir {work_dir}; {cpus} CPU cores, {jobs} training processes x {threads} '
                   f'thread(s){"; QUICK mode" if args.quick else ""}')
            # ------------------------------------------------------------ 1. data
            t0 = time.perf_counter()
            from dery.registry import DATASETS
            st = ui.stage_task('data', '[1/6] data', 4)
            sizes = {}
            for key, cfgs in (('source', pre_base), ('target', dery_cfg)):
                for split_key in ('train_dataloader', 'val_dataloader'):
                    ds = DATASETS.build(dict(plain(cfgs[split_key].dataset), pipeline=[]))
                    sizes[(key, split_key)] = len(ds)
                    ui.progress.advance(st)
            src_ds = plain(pre_base.train_dataloader.dataset)
            tgt_ds = plain(dery_cfg.train_dataloader.dataset)
            data_info = dict(
                source=dict(type=src_ds['type'], num_classes=src_ds['num_classes'],
                            num_train=sizes[('source', 'train_dataloader')],
                            num_test=sizes[('source', 'val_dataloader')], image_size=src_ds['image_size'],
                            seed=src_ds['seed'], pretrain_iters=demo.pretrain_iters,
                            batch_size=pre_base.train_dataloader.batch_size),
                target=dict(type=tgt_ds['type'], style=tgt_ds.get('style', 'grey'),
                            num_train=sizes[('target', 'train_dataloader')],
                            num_test=sizes[('target', 'val_dataloader')], image_size=tgt_ds['image_size'],
                            finetune_iters=demo.finetune_iters, batch_size=dery_cfg.train_dataloader.batch_size,
                            optimizer=f'{dery_cfg.optim_wrapper.optimizer.type} lr '
                                      f'{dery_cfg.optim_wrapper.optimizer.lr:g}, warm-up + cosine'))
            stages.append(dict(name='data', seconds=time.perf_counter() - t0,
                               note=f'{data_info["source"]["num_train"]}+{data_info["source"]["num_test"]} glyphs, '
                                    f'{data_info["target"]["num_train"]}+{data_info["target"]["num_test"]} digits'))
            ui.log(f'stage 1/6 data: done in {stages[-1]["seconds"]:.1f} s ({stages[-1]["note"]})')

            # ------------------------------------------------------------ 2. zoo pre-training
            t0 = time.perf_counter()
            entries = [plain(e) for e in dery_cfg.zoo.models]
            input_size = tuple(dery_cfg.zoo.get('input_size', (3, 224, 224)))
            zoo_info, zoo_models = [], {}
            pre_jobs, cached_zoo = [], {}
            for entry in entries:
                name = entry['name']
                zm = build_zoo_model(entry, pretrained=False)
                zm.input_size = input_size
                zoo_models[name] = zm
                cfg = copy.deepcopy(pre_base)
                bare = {k: v for k, v in entry.items() if k not in ('weights', 'pretrain')}
                cfg.model.backbone = zoo_classifier_backbone(bare, zm, pretrained=False)
                cfg.model.head.in_channels = out_channels(zm)
                cfgd = plain(cfg._cfg_dict)
                cfgd.pop('work_dir', None)
                key = digest(dict(cfg=cfgd, entry=bare, format=1, glyphs=glyph_format))
                wpath = osp.join(work_dir, 'zoo', f'{name}-{key}.pth')
                meta_path = osp.join(work_dir, 'zoo', f'{name}-{key}.json')
                entry['weights'] = wpath
                info = dict(name=name, family=zm.family, nodes=len(zm.nodes), weights=osp.relpath(wpath, work_dir))
                zoo_info.append(info)
                if osp.isfile(wpath) and osp.isfile(meta_path):
                    with open(meta_path) as f:
                        cached_zoo[name] = json.load(f)
                    continue
                job = job_for(f'pretrain_{name}', 'pretrain', f'pre-trained {name} on glyphs', cfg,
                              osp.join(work_dir, 'pretrain', name), dict(format=1),
                              export=dict(entry=bare, path=wpath, input_size=input_size))
                job['meta_path'] = meta_path
                pre_jobs.append(job)
            total = sum(j['cfg']['train_cfg']['max_iters'] for j in pre_jobs)
            st = ui.stage_task('pretrain', f'[2/6] pretrain zoo ({len(pre_jobs)} models)', max(total, 1))
            if not pre_jobs:
                ui.progress.update(st, completed=1)
            for job in sorted(pre_jobs, key=lambda j: -zoo_models[j['name'][9:]].flops()):
                ui.add_job(job['slot'], job['name'], job['cfg']['train_cfg']['max_iters'], 'pretrain')
                pool.submit(job)
            pre_results = {}
            pool.wait(pre_results, ui)
            for job in pre_jobs:
                out = pre_results[job['name']]
                meta = dict(source_top1=out['top1'], seconds=out['seconds'], iters=out['max_iters'],
                            scalars=out['scalars'], curve=out['curve'])
                atomic_save_json(meta, job['meta_path'])
                cached_zoo[job['name'][9:]] = dict(meta, fresh=True)
            for info in zoo_info:
                meta = cached_zoo[info['name']]
                info.update(source_top1=meta['source_top1'], pretrain_seconds=meta['seconds'],
                            cached=not meta.get('fresh', False))
            stages.append(dict(name='pretrain', seconds=time.perf_counter() - t0,
                               note=f'{len(pre_jobs)} trained, {len(entries) - len(pre_jobs)} cached'))
            ui.log(f'stage 2/6 pretrain: done in {stages[-1]["seconds"]:.1f} s ({stages[-1]["note"]}; source top-1 '
                   + ', '.join(f'{z["name"]} {z["source_top1"]:.1f}%' for z in zoo_info) + ')')

            # the DeRy config now names the pre-trained zoo; saved for `tools/train.py` reruns
            dery_cfg.zoo.models = entries
            dery_cfg.zoo.pretrained = True
            os.makedirs(dery_cfg.work_dir, exist_ok=True)
            dery_cfg.dump(osp.join(work_dir, 'dery_digits.py'))

            # ------------------------------------------------------------ 5a. zoo fine-tunes (start now)
            ft_jobs, ft_cached = [], {}
            zoo_rows, zoo_cfgs = [], {}

            def zoo_job(entry, seed):
                name = entry['name']
                cfg = copy.deepcopy(zoo_cfgs[name])
                cfg.randomness = dict(seed=seed, deterministic=False)
                return job_for(f'zoo_{name}_s{seed}', 'zoo', f'fine-tuned {name}, seed {seed}', cfg,
                               osp.join(work_dir, 'runs', f'zoo_{name}_s{seed}'), dict(weights=entry['weights']),
                               seed=seed)

            for entry in entries:
                name = entry['name']
                zm = zoo_models[name]
                cfg = copy.deepcopy(dery_cfg)
                cfg.model.backbone = zoo_classifier_backbone(entry, zm, pretrained=True)
                cfg.model.head.in_channels = out_channels(zm)
                zoo_cfgs[name] = cfg
                params, flops = complexity(cfg.model, cfg.data_preprocessor, input_size)
                job = zoo_job(entry, demo.zoo_seeds[0])  # more seeds once the assembly's size is known
                ft_jobs.append(job)
                zoo_rows.append(dict(label=f'{name} fine-tuned', kind='zoo', model=name,
                                     init='source pre-training', params=params, flops=flops, runs=[job['name']]))
                for info in zoo_info:
                    if info['name'] == name:
                        info.update(params=params, flops=flops)

            def submit_finetunes(jobs_):
                for job in jobs_:
                    out = cached_result(job, args.rerun)
                    if out is not None:
                        ft_cached[job['name']] = out
                        runs[job['name']] = out
                        _COUNTERS[job['slot']] = -1
                        ui.add_job(job['slot'], job['name'], job['cfg']['train_cfg']['max_iters'], 'fine-tune')
                        continue
                    ui.add_job(job['slot'], job['name'], job['cfg']['train_cfg']['max_iters'], 'fine-tune')
                    pool.submit(job)

            n_ft = len(ft_jobs) + 2 * len(demo.seeds)  # updated once the assembly is known
            t_ft = time.perf_counter()
            st_ft = ui.stage_task('fine-tune', f'[5/6] fine-tune ({n_ft} runs)', n_ft * demo.finetune_iters)
            submit_finetunes(ft_jobs)

            # ------------------------------------------------------------ 3. similarity + partition
            t0 = time.perf_counter()
            st = ui.stage_task('partition', '[3/6] similarity + partition', None)
            part = partition(dery_cfg, dery_cfg.work_dir)
            ui.progress.update(st, total=1, completed=1)
            stages.append(dict(name='partition', seconds=time.perf_counter() - t0,
                               note=f'K={part["num_sets"]}, objective {part["objective"]:.4f}'))
            ui.log(f'stage 3/6 similarity + partition: done in {stages[-1]["seconds"]:.1f} s ({stages[-1]["note"]})')

            # ------------------------------------------------------------ 4. assembly
            t0 = time.perf_counter()
            st = ui.stage_task('assemble', '[4/6] assemble', None)
            record = assemble(dery_cfg, dery_cfg.work_dir)
            ui.progress.update(st, total=1, completed=1)
            stages.append(dict(name='assemble', seconds=time.perf_counter() - t0,
                               note=f'{record["params"] / 1e6:.3f}M params, {record["flops"] / 1e6:.1f}M FLOPs'))
            ui.log(f'stage 4/6 assemble: done in {stages[-1]["seconds"]:.1f} s ({stages[-1]["note"]}: '
                   + ' -> '.join(f'{b["model"]}[{b["start"]}..{b["end"]}]' for b in record['blocks']) + ')')

            # ------------------------------------------------------------ 5b. DeRy and scratch fine-tunes
            resolved = copy.deepcopy(dery_cfg)
            resolve_model_cfg(resolved, dery_cfg.work_dir)  # exactly what tools/train.py does
            init_digest = file_digest(osp.join(dery_cfg.work_dir, 'assembled_init.pth'))[:16]
            dery_params, dery_flops = complexity(resolved.model, resolved.data_preprocessor, input_size)
            scratch = copy.deepcopy(resolved)
            scratch.model.backbone = backbone_cfg(record, None, init=False)  # same architecture, no zoo weights
            more_jobs, dery_names, scratch_names = [], [], []
            for seed in demo.seeds:
                for kind, cfg, names in (('dery', resolved, dery_names), ('scratch', scratch, scratch_names)):
                    cfg.randomness = dict(seed=seed, deterministic=False)
                    label = 'reassembled (DeRy)' if kind == 'dery' else 'DeRy architecture from scratch'
                    job = job_for(f'{kind}_s{seed}', kind, f'{label}, seed {seed}', cfg,
                                  osp.join(work_dir, 'runs', f'{kind}_s{seed}'),
                                  dict(init=init_digest, assembly=record['config_stamp']), seed=seed)
                    names.append(job['name'])
                    more_jobs.append(job)
            # the zoo models in the comparison (no larger than the reassembled one): every zoo seed
            for entry, row in zip(entries, zoo_rows):
                if row['params'] <= dery_params:
                    for seed in demo.zoo_seeds[1:]:
                        job = zoo_job(entry, seed)
                        row['runs'].append(job['name'])
                        more_jobs.append(job)
            n_ft = len(ft_jobs) + len(more_jobs)
            ui.progress.update(st_ft, total=n_ft * demo.finetune_iters,
                               description=f'[5/6] fine-tune ({n_ft} runs)')
            submit_finetunes(more_jobs)
            ft_results = {}
            pool.wait(ft_results, ui)
            runs.update(ft_results)
            pool.close()
            stages.append(dict(name='fine-tune', seconds=time.perf_counter() - t_ft,
                               note=f'{len(ft_results)} runs trained, {len(ft_cached)} cached; overlaps stages 3-4'))
            ui.log(f'stage 5/6 fine-tune: done in {stages[-1]["seconds"]:.1f} s ({stages[-1]["note"]})')

            # ------------------------------------------------------------ 6. report
            t0 = time.perf_counter()
            st = ui.stage_task('report', '[6/6] report', 1)
            rows = [dict(label='DeRy (reassembled)', kind='dery', init='zoo blocks + fitted stitches',
                         params=dery_params, flops=dery_flops, runs=dery_names),
                    dict(label='DeRy architecture, random init', kind='scratch', init='random (scratch)',
                         params=dery_params, flops=dery_flops, runs=scratch_names)] + zoo_rows
            for r in rows:
                r['top1'] = [runs[n]['top1'] for n in r['runs']]
                r['top1_mean'], r['top1_std'] = mean_std(r['top1'])
            dery_row, scratch_row = rows[0], rows[1]
            cons = plain(dery_cfg.constraints)
            (pmin, pmax), (fmin, fmax) = cons['params'], cons['flops']
            within = ((pmin is None or dery_params >= pmin) and (pmax is None or dery_params <= pmax)
                      and (fmin is None or dery_flops >= fmin) and (fmax is None or dery_flops <= fmax))
            no_larger = [r for r in zoo_rows if r['params'] <= dery_params]
            best_zoo = max(no_larger, key=lambda r: r['top1_mean']) if no_larger else None
            largest = max(zoo_rows, key=lambda r: r['params'])
            n_seeds = len(demo.seeds)

            def limits(lo, hi):
                return f'[{"-" if lo is None else f"{lo:,}"}, {"-" if hi is None else f"{hi:,}"}]'

            targets = dict(
                beats_scratch=dict(
                    met=dery_row['top1_mean'] > scratch_row['top1_mean'],
                    text=f'Reassembled beats the same architecture from scratch: {dery_row["top1_mean"]:.2f} vs '
                         f'{scratch_row["top1_mean"]:.2f} (mean of {n_seeds} seed(s), '
                         f'{dery_row["top1_mean"] - scratch_row["top1_mean"]:+.2f} points).'),
                matches_zoo=dict(
                    met=bool(within and (best_zoo is None or dery_row['top1_mean'] >= best_zoo['top1_mean'])),
                    text=('Reassembled is {} budget ({:,} params, limits {}; {:,} FLOPs, limits {}) and at least '
                          'matches the best zoo model of no larger size fine-tuned the same way: {}.').format(
                              'within' if within else 'OUTSIDE the', dery_params, limits(pmin, pmax), dery_flops,
                              limits(fmin, fmax),
                              'no zoo model is that small' if best_zoo is None else
                              f'{dery_row["top1_mean"]:.2f} vs {best_zoo["model"]} ({best_zoo["params"]:,} params) '
                              f'{best_zoo["top1_mean"]:.2f} ({dery_row["top1_mean"] - best_zoo["top1_mean"]:+.2f})')),
                best_overall=dict(
                    reference=True, met=dery_row['top1_mean'] >= max(r['top1_mean'] for r in zoo_rows),
                    text='For reference, against every zoo model (also larger ones): best '
                         f'{max(zoo_rows, key=lambda r: r["top1_mean"])["model"]} '
                         f'{max(r["top1_mean"] for r in zoo_rows):.2f} vs reassembled {dery_row["top1_mean"]:.2f}.'))
            blocks_part = {}
            for name, info in part['models'].items():
                nodes = info['nodes']
                blocks_part[name] = [dict(start=b['start'], end=b['end'], set=b['set'],
                                          start_idx=nodes.index(b['start']), end_idx=nodes.index(b['end']))
                                     for b in info['blocks']]
            plots = dict(similarity='dery/similarity_summary.png', partition='dery/partition.png',
                         curves='accuracy_curves.png')
            results = dict(
                command=command, created=time.strftime('%Y-%m-%d %H:%M:%S'), quick=bool(args.quick),
                work_dir=osp.relpath(work_dir) if not osp.relpath(work_dir).startswith('..') else work_dir,
                machine=dict(cpus=cpus, jobs=jobs, threads_per_job=threads, torch=torch.__version__),
                data=data_info, zoo=zoo_info, largest_zoo_params=largest['params'],
                partition=dict(num_sets=part['num_sets'], objective=part['objective'],
                               similarity=part.get('similarity'), models=blocks_part,
                               probe_samples=load_json(osp.join(dery_cfg.work_dir, 'similarity.json'),
                                                       'similarity file')['meta']['probe']['num_samples']),
                assembly=dict(blocks=record['blocks'], stitches=[s for s in record['stitches']],
                              params=record['params'], flops=record['flops'], constraints=record['constraints'],
                              proxy=record['proxy'], solver={k: v for k, v in record['solver'].items() if k != 'info'},
                              within_budget=within, measured_params=dery_params, measured_flops=dery_flops),
                seeds=dict(dery=list(demo.seeds), zoo=list(demo.zoo_seeds)),
                runs=runs, results=rows, targets=targets, plots=plots, stages=stages)
            plot_curves(results, osp.join(work_dir, plots['curves']))
            for key in ('similarity', 'partition'):
                if not osp.isfile(osp.join(work_dir, plots[key])):
                    raise SystemExit(f'error: the {key} plot {plots[key]} is missing in {work_dir}')
            stages.append(dict(name='report', seconds=time.perf_counter() - t0, note='report.md, results.json, PNGs'))
            results['seconds_total'] = round(time.perf_counter() - t_start, 1)
            atomic_save_json(results, osp.join(work_dir, 'results.json'))
            write_report(results, osp.join(work_dir, 'report.md'))
            ui.progress.update(st, completed=1)
            ui.log(f'stage 6/6 report: done in {stages[-1]["seconds"]:.1f} s')
    except BaseException:
        pool.terminate()
        raise
    console = ui.console
    console.print(results_table(results))
    for t in targets.values():
        tag = 'NOTE  ' if t.get('reference') else ('[green]MET[/green]   ' if t['met'] else '[red]MISSED[/red] ')
        console.print(tag + t['text'])
    console.print(f'Report: {osp.join(work_dir, "report.md")}  (total {results["seconds_total"]:.1f} s)')
    return results


if __name__ == '__main__':
    main()
