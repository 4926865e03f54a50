"""Every config under configs/ loads; every DeRy config builds its model (random init, no download).

A DeRy config's backbone is the result of its search (``assembly='auto'``), so the model is
built on a representative assembly of the config's own zoo (K blocks of several families,
stitched), with the config's neck, head, losses, batch augments, data preprocessor, optimizer
wrapper and hooks. Zoo models are built once per session (random init) and shared; the full
24-model zoo is checked by name (every name resolves in model_zoo.yml), and three of its models
are built. The paper's grid is checked field by field against the config names.
"""
import copy
import glob
import os.path as osp
import re
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from dery.models import ReassembledBackbone
from dery.registry import HOOKS, MODELS
from dery.zoo import ZooCache, entries_from_config, load_zoo

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # projects/*/configs use custom_imports of projects.*
    sys.path.insert(0, ROOT)
CONFIGS = osp.join(ROOT, 'configs')
ALL = sorted(glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True))
BASES = [p for p in ALL if '_base_' in p.split(osp.sep)]
# every config that is not a base: configs/<algorithm>/*.py and projects/*/configs/*.py
MODEL_CONFIGS = [p for p in ALL if p not in BASES] + sorted(
    glob.glob(osp.join(ROOT, 'projects', '*', 'configs', '*.py')))
DERY = sorted(glob.glob(osp.join(CONFIGS, 'dery', '*.py')))
GRID_RE = re.compile(r'^dery-k(?P<k>\d+)-(?P<p>\d+)m-(?P<f>\d+)g_(?P<gpus>\d+)xb(?P<batch>\d+)-'
                     r'(?P<protocol>fz|ft)-(?P<sched>\d+)(?P<unit>[ke])_(?P<data>[a-z0-9]+)$')

PAPER_ZOO = ['resnet18_in1k', 'resnet50_in1k', 'resnet101_in1k', 'resnet50_mocov2', 'resnet50_byol',
             'resnet50_simclr', 'resnext50_swsl', 'mobilenetv3_large', 'vit_tiny_in21k', 'vit_small_in21k',
             'vit_base_in21k', 'vit_large_in21k', 'vit_small_mocov3', 'vit_base_mae', 'swin_tiny_in1k',
             'swin_small_in1k', 'swin_base_in1k', 'swin_large_in21k', 'regnety_800mf', 'regnety_1.6gf',
             'regnety_3.2gf', 'regnety_8gf', 'regnety_16gf', 'regnety_32gf']
# name in the config file -> (mmpretrain type, classes, train split, test split, data root)
DATA = {
    'cifar10': ('CIFAR10', 10, 'train', 'test', 'data/cifar10'),
    'cifar100': ('CIFAR100', 100, 'train', 'test', 'data/cifar100'),
    'aircraft': ('FGVCAircraft', 100, 'trainval', 'test', 'data/fgvc-aircraft-2013b'),
    'caltech101': ('Caltech101', 102, 'train', 'test', 'data/caltech-101'),
    'cars': ('StanfordCars', 196, 'train', 'test', 'data/Stanford_Cars'),
    'cub': ('CUB', 200, 'train', 'test', 'data/CUB_200_2011'),
    'dtd': ('DTD', 47, 'trainval', 'test', 'data/dtd'),
    'flowers102': ('Flowers102', 102, 'trainval', 'test', 'data/Flowers102'),
    'pets': ('OxfordIIITPet', 37, 'trainval', 'test', 'data/Oxford-IIIT_Pets'),
    'in1k': ('ImageNet', 1000, 'train', 'val', 'data/imagenet'),
}
DOWNSTREAM_BUDGETS = [(10, 3), (20, 5), (30, 6), (50, 10)]
IN1K_BUDGETS = [(10, 3), (30, 6), (50, 10), (90, 20)]

# Zoo models light enough to build at 224 px in a test, in model_zoo.yml; inline zoos (tiny, demo)
# are used whole.
LIGHT = ['resnet18_in1k', 'resnet50_in1k', 'mobilenetv3_large', 'regnety_800mf', 'vit_tiny_in21k',
         'swin_tiny_in1k']

init_default_scope('dery')


def _stem(path):
    return osp.splitext(osp.basename(path))[0]


def _id(path):
    return osp.relpath(path, ROOT)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


class Zoos:
    """One ZooCache per (zoo entries, input size), shared by the whole session."""

    def __init__(self):
        self.caches = {}

    def get(self, cfg):
        entries = entries_from_config(cfg.zoo)
        size = tuple(cfg.zoo.get('input_size', (3, 224, 224)))
        key = (tuple(e.cache_key() if hasattr(e, 'cache_key') else e.name for e in entries.values()), size)
        inline = any(not isinstance(m, str) for m in cfg.zoo.models)
        if not inline:  # model_zoo.yml names: one cache for all of them at this size
            key = ('model_zoo.yml', size)
        if key not in self.caches:
            zoo = [e.to_dict() for e in entries.values()] if inline else None
            self.caches[key] = ZooCache(zoo, pretrained=False, input_size=size)
        return self.caches[key], entries


@pytest.fixture(scope='module')
def zoos():
    return Zoos()


def representative_blocks(cfg, cache, entries):
    """K blocks in stage order: the k-th K-th of the nodes of one zoo model per family in turn.

    The models are the config's own (light ones for model_zoo.yml names), one per family first,
    so consecutive blocks come from different families and every stitch kind gets built.
    """
    k = cfg.partitioner.num_sets
    inline = any(not isinstance(m, str) for m in cfg.zoo.models)
    pool = list(entries) if inline else [n for n in entries if n in LIGHT] or list(entries)[:1]
    chosen, families = [], set()
    for name in pool:
        if entries[name].family not in families:
            chosen.append(name)
            families.add(entries[name].family)
    blocks = []
    for j in range(k):
        name = chosen[j % len(chosen)]
        n = len(cache[name].nodes)
        assert n >= k, f'{name} has {n} nodes < K={k}'
        bounds = [round(i * n / k) for i in range(k + 1)]
        blocks.append(dict(model=name, start=bounds[j], end=bounds[j + 1] - 1))
    return blocks


def build_representative(cfg, zoos, frozen_blocks=None, stem='source'):
    """The config's classifier on a representative assembly of its own zoo."""
    cache, entries = zoos.get(cfg)
    blocks = representative_blocks(cfg, cache, entries)
    bb_cfg = cfg.model.backbone
    assert bb_cfg.type == 'ReassembledBackbone' and bb_cfg.get('assembly') == 'auto'
    torch.manual_seed(0)
    frozen = bb_cfg.get('frozen_blocks', False) if frozen_blocks is None else frozen_blocks
    backbone = ReassembledBackbone(blocks, zoo=cache, stem=stem, stitch_init='random', frozen_blocks=frozen)
    channels = backbone.out_specs[-1].channels
    model_cfg = _plain(cfg.model.to_dict())
    # 'auto', or given by a fixed assembly (configs/dery/paper), whose own network tests/test_fidelity.py builds
    assert model_cfg['head']['in_channels'] == 'auto' or (cfg.get('assembly') or {}).get('blocks')
    model_cfg['backbone'] = backbone
    model_cfg['head']['in_channels'] = channels
    model_cfg.setdefault('data_preprocessor', _plain(cfg.get('data_preprocessor')))
    return MODELS.build(model_cfg)


def build_plain(cfg):
    """A config whose model is fully given: build it without weights."""
    model_cfg = _plain(cfg.model.to_dict())
    bb = model_cfg.get('backbone') or {}
    if bb.get('type') == 'ReassembledBackbone':
        bb['pretrained'] = False
    model_cfg.setdefault('data_preprocessor', _plain(cfg.get('data_preprocessor')))
    return MODELS.build(model_cfg)


# ---------------------------------------------------------------- every file loads
@pytest.mark.parametrize('path', BASES, ids=_id)
def test_base_config_loads(path):
    cfg = Config.fromfile(path)
    assert cfg.filename == path


def _walk(obj, key=None):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, k)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v, key)
    else:
        yield key, obj


@pytest.mark.parametrize('path', ALL, ids=_id)
def test_paths_are_relative(path):
    cfg = Config.fromfile(path)
    for key, value in _walk(cfg.to_dict()):
        if key in ('data_root', 'ann_file', 'data_prefix', 'load_from', 'work_dir', 'checkpoint'):
            assert not (isinstance(value, str) and osp.isabs(value)), f'{key}={value!r} is absolute'


# ---------------------------------------------------------------- every config builds its model
@pytest.mark.parametrize('path', MODEL_CONFIGS, ids=_id)
def test_config_builds_its_model(path, zoos):
    cfg = Config.fromfile(path)
    if 'model' not in cfg:  # e.g. a driver script's settings (configs/demo/demo.py)
        return
    assert cfg.default_scope == 'dery'
    bb = cfg.model.get('backbone') or {}
    if bb.get('type') != 'ReassembledBackbone' or bb.get('assembly') != 'auto':
        build_plain(cfg)
        return
    # a DeRy config: every stage is configured
    for key in ('zoo', 'probe', 'similarity', 'partitioner', 'target', 'proxy', 'solver', 'constraints', 'model',
                'train_dataloader', 'val_dataloader', 'optim_wrapper', 'param_scheduler', 'train_cfg'):
        assert key in cfg, f'{key} missing'
    cons = cfg.constraints
    assert set(cons) == {'params', 'flops'} and all(isinstance(cons[k][1], int) for k in cons)
    if (cfg.get('assembly') or {}).get('blocks'):  # a fixed assembly: its blocks fit its zoo, options valid
        from dery.apis.checks import check_config
        check_config(cfg, 'assembly')
    model = build_representative(cfg, zoos)
    num_classes = cfg.model.head.num_classes
    assert model.head.num_classes == num_classes == cfg.data_preprocessor.num_classes
    # probe and proxy data are the target task's training data
    assert cfg.probe.dataset.type == cfg.target.dataset.type == cfg.train_dataloader.dataset.type
    assert cfg.probe.data_preprocessor.get('type') == 'ClsDataPreprocessor'
    # the optimizer wrapper and the hooks of the config build on it
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    wrapper_cfg.pop('type', None)  # AmpOptimWrapper needs a GPU; its settings are the same
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    assert wrapper.optimizer.defaults['lr'] == cfg.optim_wrapper.optimizer.lr
    for hook in cfg.get('custom_hooks', []):
        HOOKS.build(copy.deepcopy(hook))


def test_tiny_and_r50_swin_forward_backward(zoos):
    """Two representative models run a training step: Mixup/CutMix, label smoothing, frozen blocks."""
    from mmpretrain.structures import DataSample
    for name, size in (('tiny_cpu', 32), ('r50_swin_cifar_finetune-options', 224)):
        cfg = Config.fromfile(osp.join(CONFIGS, 'dery', f'{name}.py'))
        model = build_representative(cfg, zoos)
        model.train()
        n = cfg.model.head.num_classes
        data = dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(2)],
                    data_samples=[DataSample().set_gt_label(i % n) for i in range(2)])
        data = model.data_preprocessor(data, True)
        losses = model(**data, mode='loss')
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(loss)
        loss.backward()
        frozen = set(model.backbone.frozen_blocks)
        for i, block in enumerate(model.backbone.blocks):
            grads = [p.grad is not None for p in block.parameters()]
            assert (not any(grads)) if i in frozen else any(grads), (name, i)
        assert all(p.grad is not None for p in model.head.parameters())


# ---------------------------------------------------------------- the paper's grid
GRID = [p for p in DERY if GRID_RE.match(_stem(p))]


def test_grid_is_complete():
    names = {_stem(p) for p in GRID}
    for data in DATA:
        budgets = IN1K_BUDGETS if data == 'in1k' else DOWNSTREAM_BUDGETS
        for p, f in budgets:
            protocols = ('fz', 'ft') if data == 'in1k' else ('ft', )
            for proto in protocols:
                found = [n for n in names
                         if n.startswith(f'dery-k4-{p}m-{f}g_') and n.endswith(f'_{data}') and f'-{proto}-' in n]
                assert len(found) == 1, (data, p, f, proto, found)
    assert len(GRID) == 9 * 4 + 4 * 2


@pytest.mark.parametrize('path', GRID, ids=_id)
def test_grid_config_matches_its_name(path):
    m = GRID_RE.match(_stem(path))
    cfg = Config.fromfile(path)
    dtype, classes, train_split, test_split, root = DATA[m['data']]
    # zoo: the paper's 24 models, every name resolves in model_zoo.yml
    assert list(cfg.zoo.models) == PAPER_ZOO
    assert cfg.zoo.pretrained is True and tuple(cfg.zoo.input_size) == (3, 224, 224)
    assert set(entries_from_config(cfg.zoo)) == set(PAPER_ZOO) and set(PAPER_ZOO) <= set(load_zoo())
    # DeRy stages
    assert cfg.partitioner.type == 'CoverSetPartitioner' and cfg.partitioner.num_sets == int(m['k'])
    assert (cfg.proxy.type, cfg.solver.type) == ('NASWOT', 'ILPSolver')
    assert cfg.constraints.params == (None, int(m['p']) * 10**6)
    assert cfg.constraints.flops == (None, int(m['f']) * 10**9)
    # data
    for loader, split in ((cfg.train_dataloader, train_split), (cfg.val_dataloader, test_split),
                          (cfg.test_dataloader, test_split)):
        assert (loader.dataset.type, loader.dataset.data_root, loader.dataset.split) == (dtype, root, split)
    for stage in (cfg.probe, cfg.target):
        assert (stage.dataset.type, stage.dataset.data_root, stage.dataset.split) == (dtype, root, train_split)
    assert cfg.probe.num_samples == 0.05  # 1/20 of the training set
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == classes
    from mmpretrain.registry import DATASETS
    known = DATASETS.get(dtype).METAINFO.get('classes')  # Flowers102 has no class names
    assert known is None or len(known) == classes
    # protocol
    assert cfg.model.backbone.frozen_blocks is (m['protocol'] == 'fz')
    # batch and the lr of the recipe (5e-4 per 512 images)
    gpus, batch = int(m['gpus']), int(m['batch'])
    assert cfg.train_dataloader.batch_size == batch
    assert cfg.auto_scale_lr.base_batch_size == gpus * batch
    assert cfg.optim_wrapper.optimizer.type == 'AdamW' and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * gpus * batch / 512)
    # schedule: warm-up then cosine to the end of training
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and cosine.type == 'CosineAnnealingLR'
    if m['unit'] == 'k':
        iters = int(m['sched']) * 1000
        assert not cfg.train_cfg.by_epoch and cfg.train_cfg.max_iters == iters
        assert cosine.end == iters and cosine.T_max == iters - cosine.begin and warmup.end == cosine.begin
        assert iters == (20000 if int(m['p']) == 10 else 40000)
        assert not cfg.default_hooks.checkpoint.by_epoch
        assert [h.type for h in cfg.custom_hooks] == ['EMAHook']
    else:
        assert cfg.train_cfg.by_epoch and cfg.train_cfg.max_epochs == int(m['sched']) == cosine.end == 100
    # recipe: label smoothing, Mixup + CutMix, RandAugment
    assert cfg.model.head.loss.type == 'LabelSmoothLoss' and cfg.model.head.loss.label_smooth_val == 0.1
    assert [a.type for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert 'RandAugment' in [t.type for t in cfg.train_dataloader.dataset.pipeline]


def test_metafile_lists_every_config():
    from dery.model_index import list_models, load_model_index
    stems = sorted(_stem(p) for p in glob.glob(osp.join(CONFIGS, 'dery', '*.py')))
    assert list_models() == stems
    for info in load_model_index().values():
        assert osp.isfile(info.config), info.config
        for res in info.results:
            assert all(k.endswith('(paper)') for k in res['Metrics']) or 'Parameters' in info.metadata


# ---------------------------------------------------------------- fine-tuning options
def test_lr_multipliers_reach_the_parameter_groups(zoos):
    """paramwise custom_keys of the options config give each part of the network its lr/decay."""
    cfg = Config.fromfile(osp.join(CONFIGS, 'dery', 'r50_swin_cifar_finetune-options.py'))
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert cfg.model.backbone.frozen_blocks is True
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    assert [h.type for h in cfg.custom_hooks] == ['EMAHook']
    # the multipliers on a small network with all five parts (a 32-channel fresh stem adds stem_stitch into
    # the first block's 64 channels; a fresh stem of the block's own width feeds it directly)
    tiny = Config.fromfile(osp.join(CONFIGS, 'dery', 'tiny_cpu.py'))
    tiny.model.head.num_classes = cfg.model.head.num_classes
    tiny.data_preprocessor.num_classes = cfg.model.head.num_classes
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    for frozen in (False, True):
        model = build_representative(tiny, zoos, frozen_blocks=frozen, stem=dict(type='resnet', channels=32))
        wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
        wrapper = build_optim_wrapper(model, wrapper_cfg)
        assert wrapper.clip_grad_kwargs['max_norm'] == 5.0
        names = {id(p): n for n, p in model.named_parameters()}
        seen = set()
        for group in wrapper.optimizer.param_groups:
            for p in group['params']:
                name = names[id(p)]
                part = next(k for k in sorted(keys, key=len, reverse=True) if k in name) \
                    if any(k in name for k in keys) else None
                if not p.requires_grad:  # frozen blocks: no gradient, never updated
                    assert frozen and name.startswith('backbone.blocks.')
                    continue
                assert part is not None, f'{name} matches no key'
                seen.add(part)
                assert group['lr'] == pytest.approx(base_lr * keys[part].get('lr_mult', 1.0)), name
                assert group['weight_decay'] == pytest.approx(base_wd * keys[part].get('decay_mult', 1.0)), name
        expected = {'backbone.stem', 'backbone.stem_stitch', 'backbone.stitches', 'backbone.out_norms', 'head'}
        assert seen == expected | (set() if frozen else {'backbone.blocks'})
