"""Trustworthy runs (issue 12): stamps, resume, checkpoints, early one-line errors, numerics.

Tools run as users type them: a few in subprocesses (exit code, stderr without a traceback), the
rest in this process through ``runpy`` (the same ``dery.cli.run`` path, without paying the imports
for every case). Everything starts from the shared tiny run of ``conftest.tiny_reference``.
"""
import contextlib
import copy
import io
import os
import os.path as osp
import runpy
import shutil
import stat
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

from conftest import TINY_CONFIG as TINY, TINY_OPTS as OPTS, TINY_ROOT as ROOT, tiny_env

FAST = dict(partitioner=dict(restarts=5), proxy=dict(num_batches=1), solver=dict(top_m=2),
            assembly=dict(stitch_samples=16), probe=dict(num_samples=48, batch_size=8),
            similarity=dict(checkpoint_interval=1, plot='summary'))  # = conftest.TINY_OPTS
TRAIN = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
         'default_hooks.logger.interval=1', 'train_dataloader.batch_size=8']


def tiny_cfg(**over):
    cfg = Config.fromfile(TINY)
    cfg.merge_from_dict(FAST)
    cfg.merge_from_dict(over)
    return cfg


def tool(name, *argv, env=None):
    """``tools/<name>.py ARGV`` in this process: (exit code, stderr)."""
    old, err = sys.argv, io.StringIO()
    sys.argv = [osp.join(ROOT, 'tools', name), *argv]
    code = 0
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, err.getvalue()


def tool_subprocess(name, *argv, timeout=240):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', name), *argv], cwd=ROOT, env=tiny_env(),
                          capture_output=True, text=True, timeout=timeout)
    tool_subprocess.stdout = proc.stdout  # the loggers' lines (mmengine logs to stdout)
    return proc.returncode, proc.stderr, time.perf_counter() - t0


def assert_one_line(code, err, *patterns):
    import re
    assert code == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert len(lines) == 1, err[-3000:]
    for pat in patterns:
        assert re.search(pat, lines[0]), f'{pat!r} not in {lines[0]!r}'
    return lines[0]


def snapshot(work_dir):
    out = {}
    for dirpath, _, files in os.walk(work_dir):
        for f in files:
            p = osp.join(dirpath, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, work_dir)] = (os.stat(p).st_mtime_ns, fh.read())
    return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_reference):
    """The tiny run trained for 2 iterations (checkpoint iter_2.pth with the assembly record)."""
    work = str(tmp_path_factory.mktemp('trust') / 'work')
    shutil.copytree(tiny_reference, work)
    code, err = tool('train.py', TINY, '--work-dir', work, '--cfg-options', *OPTS, *TRAIN)
    assert code == 0, err[-3000:]
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    return work


@pytest.fixture(scope='module')
def other(tmp_path_factory):
    """Another assembly (K=2) of the same zoo: a checkpoint of its network fits no other run."""
    from dery.apis import assemble
    work = str(tmp_path_factory.mktemp('other') / 'work')
    assemble(tiny_cfg(partitioner=dict(num_sets=2)), work)
    return work


# ----------------------------------------------------------------------------- 1. complete stamps
PARTITION_CHANGES = [
    # (what the user changes, the key the message names)
    (dict(zoo=dict(pretrained=True)), 'zoo.pretrained'),
    (dict(zoo=dict(input_size=(3, 48, 48))), 'zoo.input_size'),
    (dict(zoo=dict(models={0: dict(kwargs=dict(channels=[8, 16, 32, 64]))})), 'zoo.models.tiny_resnet.kwargs'),
    (dict(zoo=dict(models={0: dict(nodes=['layer1.0', 'layer2.0', 'layer2.1', 'layer3.0', 'layer3.1',
                                          'layer4.0'])})), 'zoo.models.tiny_resnet.nodes'),
    (dict(probe=dict(dataset=dict(seed=5))), 'probe.dataset.seed'),
    (dict(probe=dict(data_preprocessor=dict(mean=[120.0, 120.0, 120.0]))), 'probe.data_preprocessor.mean'),
    (dict(probe=dict(num_samples=32)), 'probe.num_samples'),
    (dict(probe=dict(batch_size=16)), 'probe.batch_size'),
    (dict(probe=dict(seed=3)), 'probe.seed'),
    (dict(similarity=dict(pooling='max')), 'similarity.pooling'),
    (dict(similarity=dict(dtype='float32')), 'similarity.dtype'),
    (dict(partitioner=dict(restarts=6)), 'partitioner.restarts'),
]
ASSEMBLY_CHANGES = [
    (dict(target=dict(dataset=dict(seed=7))), 'target.dataset.seed'),
    (dict(target=dict(data_preprocessor=dict(std=[60.0, 60.0, 60.0]))), 'target.data_preprocessor.std'),
    (dict(proxy=dict(num_batches=2)), 'proxy.num_batches'),
    (dict(solver=dict(top_m=3)), 'solver.top_m'),
    (dict(constraints=dict(params=(None, 1_400_000))), 'constraints.params'),
    (dict(assembly=dict(stitch_samples=8)), 'assembly.stitch_samples'),
    (dict(model=dict(head=dict(num_classes=5))), 'model.head.num_classes'),
    (dict(partitioner=dict(restarts=6)), 'partition.partitioner.restarts'),
]


def _changed(over):
    cfg = tiny_cfg()
    cfg = Config(copy.deepcopy(cfg.to_dict()))
    models = over.get('zoo', {}).get('models')
    if models:  # edit an inline zoo entry in place
        over = copy.deepcopy(over)
        for i, edit in over['zoo'].pop('models').items():
            entry = dict(cfg.zoo.models[i])
            for k, v in edit.items():
                entry[k] = dict(entry.get(k) or {}, **v) if isinstance(v, dict) else v
            cfg.zoo.models[i] = entry
    cfg.merge_from_dict(over)
    return cfg


def _stamps(cfg):
    from dery.assembly.stage import assembly_stamp
    from dery.partition.stage import partition_stamp
    from dery.zoo import ZooCache
    p = partition_stamp(cfg, ZooCache.from_config(cfg.zoo))
    return p, assembly_stamp(cfg, p)


def test_unchanged_config_reuses_every_stage(tiny_reference):
    from dery.assembly.stage import current_assembly
    from dery.partition.stage import current_partition
    p, a = _stamps(tiny_cfg(similarity=dict(plot=True, progress=False, checkpoint_interval=7)))  # views only
    assert current_partition(tiny_reference, p)[0] is not None
    assert current_assembly(tiny_reference, a)[0] is not None


@pytest.mark.parametrize('over,key', PARTITION_CHANGES, ids=[k for _, k in PARTITION_CHANGES])
def test_partition_input_change_reruns(tiny_reference, over, key):
    from dery.assembly.stage import current_assembly
    from dery.partition.stage import current_partition
    p, a = _stamps(_changed(over))
    part, why = current_partition(tiny_reference, p)
    assert part is None and why.startswith(key), why
    assert current_assembly(tiny_reference, a)[0] is None  # the stages after it rerun too


@pytest.mark.parametrize('over,key', ASSEMBLY_CHANGES, ids=[k for _, k in ASSEMBLY_CHANGES])
def test_assembly_input_change_reruns(tiny_reference, over, key):
    from dery.assembly.stage import current_assembly
    _, a = _stamps(_changed(over))
    record, why = current_assembly(tiny_reference, a)
    assert record is None and why.startswith(key), why


def test_weights_file_and_algorithm_version_in_the_stamp(tmp_path, tiny_reference, monkeypatch):
    from dery.partition.stage import current_partition, partition_stamp
    from dery.utils import stamp as stamp_mod
    from dery.zoo import ZooCache, build_zoo_model
    entry = dict(name='w_res', adapter='timm', model='resnet18', family='cnn', input_size=[3, 32, 32],
                 kwargs=dict(layers=[1, 1, 1, 1], channels=[8, 8, 16, 16]))
    path = tmp_path / 'w.pth'
    torch.save(build_zoo_model(entry, pretrained=False).model.state_dict(), path)
    cfg = tiny_cfg(zoo=dict(pretrained=True))
    cfg.zoo.models = [dict(entry, weights=str(path)), cfg.zoo.models[1]]
    before = partition_stamp(cfg, ZooCache.from_config(cfg.zoo))
    sd = torch.load(path)
    sd['conv1.weight'] += 1
    torch.save(sd, path)
    after = partition_stamp(cfg, ZooCache.from_config(cfg.zoo))
    assert after.why_different(before.to_json()).startswith('zoo.models.w_res.weights.sha256 changed')
    # a stage whose maths changed never reuses its old outputs
    p, _ = _stamps(tiny_cfg())
    monkeypatch.setitem(stamp_mod.STAGE_VERSIONS, 'partition', stamp_mod.STAGE_VERSIONS['partition'] + 1)
    p2, _ = _stamps(tiny_cfg())
    assert current_partition(tiny_reference, p)[0] is not None
    assert 'algorithm version changed' in current_partition(tiny_reference, p2)[1]


def test_changed_probe_reruns_through_the_tool(tmp_path, tiny_reference):
    work = str(tmp_path / 'work')
    shutil.copytree(tiny_reference, work)
    before = open(osp.join(work, 'partition.json')).read()
    code, err, _ = tool_subprocess('assemble.py', TINY, '--work-dir', work, '--cfg-options', *OPTS,
                                   'probe.num_samples=32')
    out = tool_subprocess.stdout + err
    assert code == 0, out[-3000:]
    assert 'partition: probe.num_samples changed (48 -> 32); recomputing' in out, out[-3000:]
    assert 'assemble: partition.probe.num_samples changed (48 -> 32); recomputing' in out, out[-3000:]
    assert open(osp.join(work, 'partition.json')).read() != before
    import glob
    logs = set(glob.glob(osp.join(work, 'assemble_*.log')))
    time.sleep(1.1)  # the log file name has a 1 s timestamp
    code, err = tool('assemble.py', TINY, '--work-dir', work, '--cfg-options', *OPTS, 'probe.num_samples=32')
    new = sorted(set(glob.glob(osp.join(work, 'assemble_*.log'))) - logs)
    out = open(new[-1]).read() + err
    assert code == 0 and 'partition: reusing' in out and 'assemble: reusing' in out, out[-3000:]


# ----------------------------------------------------------------------------- 2. resume
def test_resume_with_other_settings_is_refused_and_touches_nothing(trained):
    before = snapshot(trained)
    code, err, _ = tool_subprocess('train.py', TINY, '--work-dir', trained, '--resume', '--cfg-options',
                                         *OPTS, *TRAIN, 'probe.num_samples=32')
    assert_one_line(code, err, r'--resume: .*assembly.json was made with other settings',
                    r'partition.probe.num_samples changed \(48 -> 32\)', 'resume with the config',
                    'new --work-dir')
    assert snapshot(trained) == before


def test_resume_with_the_same_settings_keeps_the_stages(trained, tmp_path):
    work = str(tmp_path / 'work')
    shutil.copytree(trained, work)
    keep = {n: snapshot(work)[n] for n in ('partition.json', 'assembly.json', 'assembled_init.pth', 'assembled.py')}
    code, err = tool('train.py', TINY, '--work-dir', work, '--resume', '--cfg-options', *OPTS,
                     *TRAIN[1:], 'train_cfg.max_iters=4')
    assert code == 0, err[-3000:]
    assert osp.isfile(osp.join(work, 'iter_4.pth'))
    assert {n: snapshot(work)[n] for n in keep} == keep


# ----------------------------------------------------------------------------- 3. checkpoints
def test_checkpoint_carries_its_assembly(trained):
    from dery.assembly import Assembly, assembly_of_checkpoint
    meta = torch.load(osp.join(trained, 'iter_2.pth'), weights_only=False)['meta']
    assert Assembly.from_json(meta['dery_assembly']).to_json() == Assembly.load(
        osp.join(trained, 'assembly.json')).to_json()
    assert assembly_of_checkpoint(osp.join(trained, 'iter_2.pth')).blocks == Assembly.load(
        osp.join(trained, 'assembly.json')).blocks


def test_test_tool_builds_the_checkpoints_network(trained, other, tmp_path):
    # --work-dir says where metrics go; the network comes from the checkpoint's run
    code, err = tool('test.py', TINY, osp.join(trained, 'iter_2.pth'), '--work-dir', other,
                     '--cfg-options', *OPTS)
    assert code == 0, err[-3000:]
    # a checkpoint that does not fit the network of the config: one line, before any evaluation
    bare = tmp_path / 'bare.pth'
    ckpt = torch.load(osp.join(trained, 'iter_2.pth'), weights_only=False)
    torch.save(dict(state_dict=ckpt['state_dict']), bare)  # no record, no assembly.json beside it
    code, err, _ = tool_subprocess('test.py', osp.join(other, 'assembled.py'), str(bare), '--work-dir',
                                   str(tmp_path / 'metrics'))
    assert_one_line(code, err, r'checkpoint .*bare.pth does not fit', 'missing|unexpected|shape',
                    'belongs to another network')


def test_get_model_and_init_cfg_refuse_foreign_weights(trained, other, tmp_path):
    from dery.apis import get_model
    from dery.errors import CheckpointError
    with pytest.raises(CheckpointError, match='does not fit'):
        get_model(TINY, assembly=other, pretrained=osp.join(trained, 'iter_2.pth'))
    work = str(tmp_path / 'work')
    shutil.copytree(trained, work)
    shutil.copy(osp.join(other, 'assembled_init.pth'), osp.join(work, 'assembled_init.pth'))
    os.remove(osp.join(work, 'last_checkpoint'))  # no training checkpoint: pretrained=True loads init_cfg
    with pytest.raises(CheckpointError, match='other blocks'):
        get_model(TINY, assembly=work, pretrained=True)
    model = get_model(TINY, assembly=trained, pretrained=osp.join(trained, 'iter_2.pth'))
    assert model(torch.randn(1, 3, 32, 32), mode='tensor').shape == (1, 4)


# ----------------------------------------------------------------------------- 4 + 5. early, one line
EARLY = [
    # (tool, --cfg-options, patterns of the one line)
    ('assemble.py', ['solver.type=GreedySwapSolver'], [r"GreedySwapSolver does not take 'top_m'", 'iters']),
    ('partition.py', ['partitioner.num_set=3'], [r"'partitioner' has no key 'num_set'", 'num_sets']),
    ('partition.py', ['partitioner.num_sets=0'], ['num_sets must be >= 1']),
    ('partition.py', ['partitioner.restarts=0'], ['restarts must be an integer >= 1']),
    ('partition.py', ['partitioner.eps=-1'], ['eps must be >= 0']),
    ('partition.py', ['partitioner.num_sets=9'], ['num_sets=9 exceeds the 6 nodes']),
    ('assemble.py', ['model.backbone.frozen_blocks=[7]'], ['frozen_blocks has index 7', '3 blocks']),
    ('assemble.py', ['model.backbone.out_indices=[3]'], ['out_indices has index 3']),
    ('partition.py', ['probe.num_samples=1'], ['at least 2 samples', 'probe.num_samples >= 2']),
    ('partition.py', ['probe.num_samples=500'], ['more than the 64 samples', 'probe.num_samples <= 64']),
    ('assemble.py', ['proxy.batch_size=200'], ['200 target samples', 'has 64']),
    ('assemble.py', ['assembly.stem=fresh'], ["assembly.stem must be one of 'source', 'resnet'"]),
    ('partition.py', ['similarity.type=LinerCKA'], ["'LinerCKA' is not registered", 'LinearCKA']),
    ('train.py', ['model.head.num_classes=7'], ['head predicts 7 classes', 'model.head.num_classes=4']),
    ('partition.py', ['zoo.models=[tiny_resnet]'], ['is not in the model zoo|zoo has 1 model']),
]


@pytest.mark.parametrize('tool_name,options,patterns', EARLY, ids=[' '.join(c[1]) for c in EARLY])
def test_config_errors_one_line_before_work(tool_name, options, patterns, tmp_path):
    work = str(tmp_path / 'work')
    code, err = tool(tool_name, TINY, '--work-dir', work, '--cfg-options', *OPTS, *options)
    assert_one_line(code, err, *patterns)
    # before any work (no wall-time assertion: the machines are shared; the note quotes the seconds)
    assert not osp.exists(osp.join(work, 'similarity_cache')), 'the error came after the similarity stage'


def test_errors_in_subprocesses_and_debug_traceback(tmp_path):
    code, err, _ = tool_subprocess('assemble.py', TINY, '--work-dir', str(tmp_path), '--cfg-options',
                                         *OPTS, 'solver.type=GreedySwapSolver')
    assert_one_line(code, err, 'does not take')
    assert not osp.exists(osp.join(str(tmp_path), 'similarity_cache'))
    code, err, _ = tool_subprocess('partition.py', TINY, '--work-dir', str(tmp_path), '--debug', '--cfg-options',
                                   *OPTS, 'partitioner.eps=-1')
    assert code != 0 and 'Traceback' in err and 'eps must be >= 0' in err


def test_one_model_zoo_refused(tmp_path):
    cfg = tiny_cfg()
    cfg.zoo.models = [cfg.zoo.models[0]]
    from dery.apis import partition
    from dery.errors import ConfigError
    with pytest.raises(ConfigError, match='zoo has 1 model'):
        partition(cfg, str(tmp_path))


# ----------------------------------------------------------------------------- 6. numerics
@pytest.mark.parametrize('kind', ['LinearCKA', 'MinibatchCKA', 'LinearRegression', 'SVCCA', 'RBFCKA'])
@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_similarity_scale_and_offset(kind, dtype):
    import numpy as np

    from dery.registry import SIMILARITIES
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 6, generator=g) + 0.5 * torch.randn(64, 6, generator=g)
    m = SIMILARITIES.build(dict(type=kind, dtype=dtype))

    def value(a, b):
        m.reset()
        if kind == 'MinibatchCKA':
            for r in range(0, 64, 16):
                m.update([a[r:r + 16], b[r:r + 16]])
        else:
            m.update([a, b])
        out = m.compute()
        assert torch.isfinite(out).all()
        return float(out[0, 1])

    ref = value(x, y)
    assert ref > 0.3
    for scale in (1e20, 1e-20):  # float32 Gram matrices overflow / underflow without care
        assert value(x * scale, y * scale) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    # large offsets are not constant: the values are those of the quantised data, not 0
    for off, dt in ((1e6, torch.float32), (100.0, torch.float16)):
        xa, ya = (x + off).to(dt), (y + off).to(dt)
        expect = value(xa.double() - off, ya.double() - off)
        got = value(xa, ya)
        assert got > 0.3 and got == pytest.approx(expect, rel=1e-3, abs=1e-5), (got, expect)
    # a constant node is 0 against everything, never NaN; a single sample is refused
    m.reset()
    m.update([torch.ones(16, 3) * 5, x[:16]])
    assert float(m.compute()[0, 1]) == 0.0
    if kind != 'MinibatchCKA':
        m.reset()
        m.update([x[:1], y[:1]])
        with pytest.raises(ValueError, match='at least'):
            m.compute()
    np.testing.assert_allclose(value(x, x), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- 7. zoo overrides, input size
def test_zoo_entry_by_name_with_overrides_and_input_size():
    from dery.zoo import ZooCache, ZooError, entries_from_config, load_zoo
    base = load_zoo()['vit_tiny_in21k']
    zoo_cfg = dict(pretrained=False, input_size=(3, 64, 64),
                   models=[dict(name='vit_tiny_in21k', kwargs=dict(depth=2)), 'resnet18_in1k'])
    entries = entries_from_config(zoo_cfg)
    vit = entries['vit_tiny_in21k']
    assert vit.model == base.model and vit.kwargs == dict(base.kwargs, depth=2)
    zoo = ZooCache.from_config(zoo_cfg)
    zm = zoo['vit_tiny_in21k']  # img_size=64 reached timm: 4 x 4 patches + the class token
    assert zm.out_spec(-1).shape == (17, 192) and len(zm.nodes) == 2
    bad = ZooCache([dict(name='small_window', adapter='mmpretrain', family='swin',
                         model=dict(type='SwinTransformer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],
                                                                      num_heads=[1, 2, 4, 8])))],
                   pretrained=False, input_size=(3, 64, 64))
    with pytest.raises(ZooError, match=r"zoo model 'small_window' cannot run at input size \[3, 64, 64\]"):
        bad['small_window']


# ----------------------------------------------------------------------------- 8. permissions
def test_outputs_have_the_usual_permissions(tiny_reference):
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    for name in ('partition.json', 'assembly.json', 'assembled_init.pth', 'assembled.py', 'similarity.npz',
                 'similarity.json', 'partition.png'):
        mode = stat.S_IMODE(os.stat(osp.join(tiny_reference, name)).st_mode)
        assert mode == want, f'{name}: {oct(mode)} != {oct(want)}'
