"""Stage 5 of the demo: every fine-tune, with one schedule and the same seeds, and the proxy calibration's runs.

The runs, in the order they are submitted to the pool: every zoo model from
its source pre-training, every seed (they start before the partition, the
parent partitions and assembles meanwhile); the reassembled model (the config
tools/train.py would run) and the same architecture from random init for
every seed; the calibration's assemblies on the digits task (the solver's
answer reuses the reassembled model's seed-0 run) and on the second task;
last the best cross-family assembly of the digits calibration, for more seeds.
A run whose result is cached under the same key is not trained again
(:func:`dery.demo.jobs.cached_result`); the calibration's runs are the
records of :mod:`dery.calibration`, so ``tools/analysis_tools/proxy_calibration.py``
reuses them and the demo reuses its.
"""
import copy
import os.path as osp
import time

from .jobs import cached_result
from .pretrain import zoo_classifier

__all__ = ['complexity', 'FineTunes']


def complexity(model_cfg, data_preprocessor, input_size):
    """``(params, FLOPs)`` of the classifier ``model_cfg`` at ``input_size``."""
    from dery.models import model_complexity
    from dery.registry import MODELS
    from dery.utils import to_plain
    model = MODELS.build(dict(copy.deepcopy(to_plain(model_cfg)), data_preprocessor=to_plain(data_preprocessor)))
    return model_complexity(model, tuple(input_size))


class FineTunes:
    """The fine-tune runs of one demo: submitted in batches, collected in :meth:`wait`.

    ``runs``: name -> result (cached results as they are found, then the trained
    ones in completion order); ``zoo_rows``: one results row per zoo model;
    ``calib_names``: task -> {calibration run name: the run that holds its result}.
    """

    def __init__(self, ui, pool, demo, dery_cfg, work_dir, rerun=False):
        self.ui, self.pool, self.demo, self.dery_cfg, self.work_dir, self.rerun = \
            ui, pool, demo, dery_cfg, work_dir, rerun
        self.runs, self.cached, self.trained = {}, {}, {}
        self.zoo_rows, self.zoo_cfgs = [], {}
        self.dery_names, self.scratch_names, self.cross_names = [], [], []
        self.calib_names = {}
        self.cross = None      # the best cross-family sample of the digits calibration
        self.params = self.flops = None  # of the reassembled model
        self.task = self.t0 = None
        self.num_jobs = 0

    def zoo_job(self, entry, seed):
        name = entry['name']
        cfg = copy.deepcopy(self.zoo_cfgs[name])
        cfg.randomness = dict(seed=seed, deterministic=False)
        return self.pool.job(f'zoo_{name}_s{seed}', 'zoo', f'fine-tuned {name}, seed {seed}', cfg,
                             osp.join(self.work_dir, 'runs', f'zoo_{name}_s{seed}'), dict(weights=entry['weights']),
                             seed=seed)

    def submit(self, jobs):
        for job in jobs:
            out = cached_result(job, self.rerun)
            if out is not None:
                self.cached[job['name']] = self.runs[job['name']] = out
                self.pool.mark_done(job)
            self.ui.add_job(job, 'fine-tune')
            if out is None:
                self.pool.submit(job)
        self.num_jobs += len(jobs)
        if self.task is not None:
            total = self.num_jobs * self.demo.finetune_iters
            self.ui.progress.update(self.task, total=total, description=f'[5/6] fine-tune ({self.num_jobs} runs)')

    def start_zoo(self, zoo):
        """The zoo models' rows (params and FLOPs measured on the target classifier) and their fine-tunes,
        every seed, started now."""
        jobs = []
        for entry in zoo.entries:
            name = entry['name']
            cfg = zoo_classifier(self.dery_cfg, entry, zoo.models[name], pretrained=True)
            self.zoo_cfgs[name] = cfg
            params, flops = complexity(cfg.model, cfg.data_preprocessor, zoo.input_size)
            row_jobs = [self.zoo_job(entry, seed) for seed in self.demo.seeds]
            jobs += row_jobs
            self.zoo_rows.append(dict(label=f'{name} fine-tuned', kind='zoo', model=name,
                                      init='source pre-training', params=params, flops=flops,
                                      runs=[j['name'] for j in row_jobs]))
            for info in zoo.info:
                if info['name'] == name:
                    info.update(params=params, flops=flops)
        self.t0 = time.perf_counter()
        self.task = self.ui.stage_task('fine-tune', '[5/6] fine-tune', 1)
        self.submit(jobs)

    def start_reassembled(self, assembly, zoo):
        """The reassembled model (``assembly='auto'`` resolved, exactly what tools/train.py does) and its
        architecture from random init, every seed."""
        from dery.assembly import resolve_model_cfg
        from dery.utils import file_digest
        dery_cfg = self.dery_cfg
        resolved = copy.deepcopy(dery_cfg)
        resolve_model_cfg(resolved, dery_cfg.work_dir)
        init_digest = file_digest(osp.join(dery_cfg.work_dir, 'assembled_init.pth'))[:16]
        self.params, self.flops = complexity(resolved.model, resolved.data_preprocessor, zoo.input_size)
        scratch = copy.deepcopy(resolved)
        scratch.model.backbone = assembly.backbone_cfg(None, init=False)  # same architecture, no zoo weights
        jobs = []
        for seed in self.demo.seeds:
            for kind, cfg, names in (('dery', resolved, self.dery_names), ('scratch', scratch, self.scratch_names)):
                cfg.randomness = dict(seed=seed, deterministic=False)
                label = 'reassembled (DeRy)' if kind == 'dery' else 'DeRy architecture from scratch'
                job = self.pool.job(f'{kind}_s{seed}', kind, f'{label}, seed {seed}', cfg,
                                    osp.join(self.work_dir, 'runs', f'{kind}_s{seed}'),
                                    dict(init=init_digest, assembly=assembly.stamp), seed=seed)
                names.append(job['name'])
                jobs.append(job)
        self.submit(jobs)

    def start_calibration(self, task, calib, reuse_dery=False):
        """The calibration's runs of ``task``; with ``reuse_dery`` the solver's answer takes the
        reassembled model's run of the same seed (the same network, init and schedule)."""
        names, jobs = {}, []
        chosen = next((s for s in calib.samples if s.source == 'solver'), None)
        for run in calib.runs:
            if reuse_dery and chosen is not None and run['sample'] == chosen.name \
                    and f'dery_s{run["seed"]}' in self.dery_names:
                names[run['name']] = f'dery_s{run["seed"]}'
                continue
            # the same assembly may be sampled on several tasks: the demo's run names carry the task
            job = self.pool.adopt(dict(run, name=f'calib_{task}_{run["name"]}'))
            names[run['name']] = job['name']
            jobs.append(job)
        self.calib_names[task] = names
        self.submit(jobs)

    def calibration_results(self, task):
        """``{calibration run name: result}`` of ``task`` (after :meth:`wait`)."""
        return {name: self.runs[src] for name, src in self.calib_names[task].items()}

    def wait_calibration(self, task):
        """Wait for the runs of ``task``'s calibration only (the others keep training)."""
        self.pool.wait(self.trained, self.ui, only=set(self.calib_names[task].values()) - set(self.runs))
        self.runs.update(self.trained)

    def start_cross_family(self, calib, task):
        """The best cross-family assembly of ``task``'s calibration (by its seed-0 top-1), fine-tuned for
        the demo's ``cross_family_seeds``; None when no sampled assembly mixes families."""
        results = self.calibration_results(task)
        scored = []
        for s in calib.samples:
            if not s.cross_family:
                continue
            top1 = [results[r['name']]['top1'] for r in calib.runs if r['sample'] == s.name]
            scored.append((sum(top1) / len(top1), s))
        if not scored:
            return None
        best_top1, sample = max(scored, key=lambda t: t[0])
        self.cross = dict(sample=sample, selection_top1=best_top1, selection_seeds=list(calib.opts['seeds']))
        jobs = []
        for seed in self.demo.cross_family_seeds:
            run = calib.run(sample, seed)
            job = self.pool.adopt(dict(run, name=f'cross_{task}_{run["name"]}',
                                       desc=f'best cross-family assembly {sample.name}, seed {seed}'))
            self.cross_names.append(job['name'])
            jobs.append(job)
        self.submit(jobs)
        return sample

    def wait(self):
        """Every run finished; the stage's note."""
        self.pool.wait(self.trained, self.ui)
        self.runs.update(self.trained)
        return f'{len(self.trained)} runs trained, {len(self.cached)} cached; overlaps stages 3-4'
