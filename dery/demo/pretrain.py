"""Stage 2 of the demo: the zoo pre-trained on the source task, its weights exported as plain zoo state dicts.

Each zoo model is trained as DeRy sees it (its stem and all its nodes, one
``ReassembledBackbone`` block, a linear head) with the source config, then
saved as ``WORK_DIR/zoo/<model>-<key>.pth`` (+ ``.json``: source top-1,
seconds, curve). The key hashes the training config, the entry and the glyph
renderer's format: a weights file with its key is reused as it is.
"""
import copy
import json
import os
import os.path as osp
from dataclasses import dataclass

from .jobs import digest, job_config

__all__ = ['Zoo', 'zoo_classifier', 'pretrain_zoo', 'pretrain_summary', 'use_pretrained_zoo']


@dataclass
class Zoo:
    """The demo's zoo after stage 2."""
    entries: list     # the DeRy config's zoo entries, ``weights``: the pre-trained file
    models: dict      # name -> ZooModel (random init, at ``input_size``)
    info: list        # per model: name, family, nodes, weights, source top-1, pre-training seconds, cached
    input_size: tuple
    note: str         # 'N trained, M cached'


def zoo_classifier(base, entry, zm, pretrained):
    """``base`` with the zoo model as its backbone (its stem and all its nodes, one ReassembledBackbone
    block) and the head's input channels set."""
    cfg = copy.deepcopy(base)
    cfg.model.backbone = dict(type='ReassembledBackbone',
                              blocks=[dict(model=entry['name'], start=zm.nodes[0], end=zm.nodes[-1])],
                              zoo=[entry], pretrained=pretrained, input_size=tuple(zm.input_size), stem='source',
                              stitch_init='random')
    cfg.model.head.in_channels = zm.out_spec(-1).channels
    return cfg


def pretrain_zoo(ui, pool, demo, pre_base, dery_cfg, work_dir):
    """Pre-train every zoo model of ``dery_cfg`` whose weights are not in ``WORK_DIR/zoo`` yet (longest
    first, in the pool), each with its family's recipe (``demo.pretrain_recipes``); the entries then name
    the weights."""
    from dery.datasets.procedural import _FORMAT as glyph_format
    from .config import pretrain_recipe, set_schedule
    from dery.utils import atomic_save_json, to_plain
    from dery.zoo import build_zoo_model
    entries = [to_plain(e) for e in dery_cfg.zoo.models]
    input_size = tuple(dery_cfg.zoo.get('input_size', (3, 224, 224)))
    zoo_info, zoo_models = [], {}
    pre_jobs, cached_zoo = [], {}
    for entry in entries:
        name = entry['name']
        zm = build_zoo_model(entry, pretrained=False)
        zm.input_size = input_size
        zoo_models[name] = zm
        bare = {k: v for k, v in entry.items() if k not in ('weights', 'pretrain')}
        cfg = zoo_classifier(pre_base, bare, zm, pretrained=False)
        recipe = pretrain_recipe(demo, name, zm.family)
        set_schedule(cfg, recipe['iters'], recipe['iters'], recipe['warmup'])
        cfg.optim_wrapper.optimizer.lr = recipe['lr']
        key = digest(dict(cfg=job_config(cfg), entry=bare, format=1, glyphs=glyph_format))
        wpath = osp.join(work_dir, 'zoo', f'{name}-{key}.pth')
        meta_path = osp.join(work_dir, 'zoo', f'{name}-{key}.json')
        entry['weights'] = wpath
        zoo_info.append(dict(name=name, family=zm.family, nodes=len(zm.nodes), weights=osp.relpath(wpath, work_dir),
                             recipe=dict(recipe, batch_size=int(cfg.train_dataloader.batch_size),
                                         optimizer=cfg.optim_wrapper.optimizer.type,
                                         weight_decay=cfg.optim_wrapper.optimizer.get('weight_decay'))))
        if osp.isfile(wpath) and osp.isfile(meta_path):
            with open(meta_path) as f:
                cached_zoo[name] = json.load(f)
            continue
        job = pool.job(f'pretrain_{name}', 'pretrain', f'pre-trained {name} on glyphs', cfg,
                       osp.join(work_dir, 'pretrain', name), dict(format=1),
                       export=dict(entry=bare, path=wpath, input_size=input_size))
        pre_jobs.append((name, meta_path, job))

    total = sum(job['cfg']['train_cfg']['max_iters'] for _, _, job in pre_jobs)
    st = ui.stage_task('pretrain', f'[2/6] pretrain zoo ({len(pre_jobs)} models)', max(total, 1))
    if not pre_jobs:
        ui.progress.update(st, completed=1)
    # the longest runs first (iterations x FLOPs), so that the pool's two ends finish together
    def work(j):
        return zoo_models[j[0]].flops() * j[2]['cfg']['train_cfg']['max_iters']

    for name, _, job in sorted(pre_jobs, key=lambda j: -work(j)):
        ui.add_job(job, 'pretrain')
        pool.submit(job)
    pre_results = {}
    pool.wait(pre_results, ui)
    for name, meta_path, job in pre_jobs:
        out = pre_results[job['name']]
        meta = dict(source_top1=out['top1'], seconds=out['seconds'], iters=out['max_iters'],
                    scalars=out['scalars'], curve=out['curve'])
        atomic_save_json(meta, meta_path)
        cached_zoo[name] = dict(meta, fresh=True)
    for info in zoo_info:
        meta = cached_zoo[info['name']]
        info.update(source_top1=meta['source_top1'], pretrain_seconds=meta['seconds'],
                    cached=not meta.get('fresh', False))
    return Zoo(entries=entries, models=zoo_models, info=zoo_info, input_size=input_size,
               note=f'{len(pre_jobs)} trained, {len(entries) - len(pre_jobs)} cached')


def use_pretrained_zoo(dery_cfg, zoo, work_dir, name='dery_digits'):
    """The DeRy config now names the pre-trained zoo; saved as ``WORK_DIR/<name>.py`` for ``tools/train.py``
    and ``tools/analysis_tools/proxy_calibration.py`` reruns."""
    dery_cfg.zoo.models = zoo.entries
    dery_cfg.zoo.pretrained = True
    os.makedirs(dery_cfg.work_dir, exist_ok=True)
    dery_cfg.dump(osp.join(work_dir, f'{name}.py'))


def pretrain_summary(zoo):
    """``N trained, M cached; source top-1 a x%, ...``: the stage line's detail."""
    return f'{zoo.note}; source top-1 ' + ', '.join(f'{z["name"]} {z["source_top1"]:.1f}%' for z in zoo.info)
