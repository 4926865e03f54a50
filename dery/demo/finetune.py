"""Stage 5 of the demo: every fine-tune on the target task, with one schedule and the same seeds.

The runs: each zoo model from its source pre-training (first zoo seed; they
start before the partition, the parent partitions and assembles meanwhile),
then the reassembled model (the config tools/train.py would run) and the same
architecture from random init for every DeRy seed, and the other zoo seeds of
the zoo models no larger than the reassembled one (the comparison). A run
whose result is cached under the same key is not trained again
(:func:`dery.demo.jobs.cached_result`).
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
    """The fine-tune runs of one demo: submitted in two batches, collected in :meth:`wait`.

    ``runs``: name -> result (cached results as they are found, then the trained
    ones in completion order); ``zoo_rows``: one results row per zoo model.
    """

    def __init__(self, ui, pool, demo, dery_cfg, work_dir, rerun=False):
        self.ui, self.pool, self.demo, self.dery_cfg, self.work_dir, self.rerun = \
            ui, pool, demo, dery_cfg, work_dir, rerun
        self.runs, self.cached, self.trained = {}, {}, {}
        self.zoo_rows, self.zoo_cfgs = [], {}
        self.first_jobs = []
        self.dery_names, self.scratch_names = [], []
        self.params = self.flops = None  # of the reassembled model
        self.task = self.t0 = None

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

    def start_zoo(self, zoo):
        """The zoo models' rows (params and FLOPs measured on the target classifier) and their fine-tunes
        of the first zoo seed, started now (more seeds once the assembly's size is known)."""
        for entry in zoo.entries:
            name = entry['name']
            cfg = zoo_classifier(self.dery_cfg, entry, zoo.models[name], pretrained=True)
            self.zoo_cfgs[name] = cfg
            params, flops = complexity(cfg.model, cfg.data_preprocessor, zoo.input_size)
            job = self.zoo_job(entry, self.demo.zoo_seeds[0])
            self.first_jobs.append(job)
            self.zoo_rows.append(dict(label=f'{name} fine-tuned', kind='zoo', model=name,
                                      init='source pre-training', params=params, flops=flops, runs=[job['name']]))
            for info in zoo.info:
                if info['name'] == name:
                    info.update(params=params, flops=flops)
        n_ft = len(self.first_jobs) + 2 * len(self.demo.seeds)  # updated once the assembly is known
        self.t0 = time.perf_counter()
        self.task = self.ui.stage_task('fine-tune', f'[5/6] fine-tune ({n_ft} runs)', n_ft * self.demo.finetune_iters)
        self.submit(self.first_jobs)

    def start_reassembled(self, assembly, zoo):
        """The reassembled model (``assembly='auto'`` resolved, exactly what tools/train.py does) and its
        architecture from random init for every DeRy seed, and the other seeds of the zoo models no larger."""
        from dery.assembly import resolve_model_cfg
        from dery.utils import file_digest
        dery_cfg = self.dery_cfg
        resolved = copy.deepcopy(dery_cfg)
        resolve_model_cfg(resolved, dery_cfg.work_dir)
        init_digest = file_digest(osp.join(dery_cfg.work_dir, 'assembled_init.pth'))[:16]
        self.params, self.flops = complexity(resolved.model, resolved.data_preprocessor, zoo.input_size)
        scratch = copy.deepcopy(resolved)
        scratch.model.backbone = assembly.backbone_cfg(None, init=False)  # same architecture, no zoo weights
        more_jobs = []
        for seed in self.demo.seeds:
            for kind, cfg, names in (('dery', resolved, self.dery_names), ('scratch', scratch, self.scratch_names)):
                cfg.randomness = dict(seed=seed, deterministic=False)
                label = 'reassembled (DeRy)' if kind == 'dery' else 'DeRy architecture from scratch'
                job = self.pool.job(f'{kind}_s{seed}', kind, f'{label}, seed {seed}', cfg,
                                    osp.join(self.work_dir, 'runs', f'{kind}_s{seed}'),
                                    dict(init=init_digest, assembly=assembly.stamp), seed=seed)
                names.append(job['name'])
                more_jobs.append(job)
        # the zoo models in the comparison (no larger than the reassembled one): every zoo seed
        for entry, row in zip(zoo.entries, self.zoo_rows):
            if row['params'] <= self.params:
                for seed in self.demo.zoo_seeds[1:]:
                    job = self.zoo_job(entry, seed)
                    row['runs'].append(job['name'])
                    more_jobs.append(job)
        n_ft = len(self.first_jobs) + len(more_jobs)
        self.ui.progress.update(self.task, total=n_ft * self.demo.finetune_iters,
                                description=f'[5/6] fine-tune ({n_ft} runs)')
        self.submit(more_jobs)

    def wait(self):
        """Every run finished; the stage's note."""
        self.pool.wait(self.trained, self.ui)
        self.runs.update(self.trained)
        return f'{len(self.trained)} runs trained, {len(self.cached)} cached; overlaps stages 3-4'
