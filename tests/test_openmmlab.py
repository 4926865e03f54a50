"""At home in OpenMMLab (issue 15): mmpretrain's own tools on DeRy configs, export with parity checks,
publishing, inference, quiet building, TensorBoard, the component catalogue, light tools.

mmpretrain's tools are the scripts shipped in the mmpretrain wheel (``mmpretrain/.mim/tools``), run unchanged
in subprocesses on the shared tiny trained run (``conftest.tiny_trained``). The export and TensorBoard tests skip
with a one-line reason when their optional package is missing (requirements/optional.txt installs them).
"""
import glob
import hashlib
import itertools
import os
import os.path as osp
import re
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG, TINY_ROOT as ROOT, have_tensorboard, tiny_env

import mmpretrain

MIM_TOOLS = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools')


def run_tool(path, *argv):
    """A tool in this process as a user runs it (``runpy``): (exit code, stdout, stderr)."""
    import contextlib
    import io
    old, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [path, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------------- 1. mmpretrain's tools
def test_mmpretrain_registries_find_dery_modules():
    import mmpretrain.registry as mp

    import dery.all_modules  # noqa: F401 - what custom_imports does
    from dery.models import ReassembledBackbone
    from dery.registry import HOOKS, MODELS
    assert mp.MODELS.get('ReassembledBackbone') is ReassembledBackbone
    assert mp.DATASETS.get('SyntheticImageDataset') is not None
    assert mp.HOOKS.get('AssemblyRecordHook') is HOOKS.get('AssemblyRecordHook')
    # mmpretrain's own names are never replaced; a module registered later is found there too
    from mmpretrain.models import ImageClassifier
    assert mp.MODELS.get('ImageClassifier') is ImageClassifier

    class LateStitch(torch.nn.Module):
        pass

    MODELS.register_module(module=LateStitch)
    try:
        assert mp.MODELS.get('LateStitch') is LateStitch
    finally:
        MODELS._module_dict.pop('LateStitch', None)
        mp.MODELS._module_dict.pop('LateStitch', None)


def test_every_config_imports_dery(tiny_reference):
    """Every config that builds a model names dery.all_modules in custom_imports (so do assembled.py files)."""
    from mmengine.config import Config
    if ROOT not in sys.path:  # projects/*/configs import projects.*
        sys.path.insert(0, ROOT)
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                   + glob.glob(osp.join(ROOT, 'projects', '*', 'configs', '*.py')))
    checked = 0
    for path in paths:
        if f'{os.sep}_base_{os.sep}' in path:
            continue  # parts of configs
        cfg = Config.fromfile(path)
        if 'model' not in cfg:
            continue  # a zoo list, the demo's settings
        checked += 1
        assert 'dery.all_modules' in ((cfg.get('custom_imports') or {}).get('imports') or []), path
    assert checked > 40
    assembled = Config.fromfile(osp.join(tiny_reference, 'assembled.py'))  # written by dery.assembly
    assert 'dery.all_modules' in assembled.custom_imports.imports


def _mim(script, *argv):
    return [sys.executable, osp.join(MIM_TOOLS, script), *argv]


def test_mmpretrain_tools_run_unchanged(tiny_trained, tmp_path):
    """get_flops, confusion_matrix, analyze_logs plot_curve, browse_dataset, print_config from the wheel."""
    assembled, ckpt = osp.join(tiny_trained, 'assembled.py'), osp.join(tiny_trained, 'iter_2.pth')
    (json_log, ) = glob.glob(osp.join(tiny_trained, '*', 'vis_data', '2*.json'))
    runs = {
        'get_flops': _mim('analysis_tools/get_flops.py', assembled, '--shape', '32'),
        'confusion_matrix': _mim('analysis_tools/confusion_matrix.py', assembled, ckpt, '--show-path',
                                 str(tmp_path / 'cm.png')),
        'analyze_logs': _mim('analysis_tools/analyze_logs.py', 'plot_curve', json_log, '--keys', 'loss', '--out',
                             str(tmp_path / 'loss.png')),
        'browse_dataset': _mim('visualization/browse_dataset.py', TINY_CONFIG, '-o', str(tmp_path / 'browse'), '-n',
                               '2', '-m', 'original', '--not-show'),
        'print_config': _mim('misc/print_config.py', TINY_CONFIG),
    }
    env = dict(tiny_env(), MPLBACKEND='Agg')
    procs, results = list(runs.items()), {}
    while procs:  # two at a time: the machine has two cores
        batch, procs = procs[:2], procs[2:]
        started = [(name, subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)) for name, cmd in batch]
        for name, p in started:
            out, _ = p.communicate(timeout=300)
            results[name] = (p.returncode, out)
    for name, (code, out) in results.items():
        assert code == 0, f'{name}:\n{out[-3000:]}'
    assert re.search(r'Flops: [\d.]+M', results['get_flops'][1]), results['get_flops'][1][-2000:]
    assert osp.isfile(tmp_path / 'cm.png') and osp.isfile(tmp_path / 'loss.png')
    assert len(os.listdir(tmp_path / 'browse')) == 2
    assert "type='ReassembledBackbone'" in results['print_config'][1]


# ----------------------------------------------------------------------------------- 2. export
TINY = {
    'cnn': dict(name='cnn', adapter='timm', model='resnet18', family='cnn',
                kwargs=dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128]), input_size=[3, 32, 32]),
    'vit': dict(name='vit', adapter='timm', model='vit_tiny_patch16_224', family='vit',
                kwargs=dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2), input_size=[3, 32, 32]),
    'swin': dict(name='swin', adapter='mmpretrain',
                 model=dict(type='SwinTransformer', arch=dict(embed_dims=24, depths=[1, 1, 1, 1],
                                                              num_heads=[1, 2, 2, 4]),
                            img_size=32, patch_size=2, window_size=4, pad_small_map=True),
                 family='swin', input_size=[3, 32, 32]),
}
TRANSITIONS = list(itertools.product(TINY, TINY))


@pytest.fixture(scope='module')
def nine():
    """One tiny classifier per family transition (block of the first family, stitch, block of the second), with
    a head of unit-variance weights so the logits are of order one."""
    from mmengine.registry import init_default_scope

    from dery.registry import MODELS
    from dery.zoo import ZooCache
    init_default_scope('dery')
    torch.manual_seed(0)
    cache = ZooCache(list(TINY.values()), pretrained=False, input_size=(3, 32, 32))
    nets = {}
    for src, dst in TRANSITIONS:
        first = dict(model=src, start=0, end=1) if src != dst else dict(model=src, start=0, end=0)
        blocks = [first, dict(model=dst, start=2, end=3)]
        bb = dict(type='ReassembledBackbone', blocks=blocks, zoo=cache, input_size=(3, 32, 32), stitch_init='random')
        channels = MODELS.build(bb)(torch.zeros(1, 3, 32, 32))[-1].shape[1]
        net = MODELS.build(dict(
            type='ImageClassifier', backbone=bb, neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=5, in_channels=channels),
            data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[64.0] * 3, to_rgb=True)))
        torch.nn.init.normal_(net.head.fc.weight, std=1.0)
        assert type(net.backbone.stitches[0]).__name__ != 'Identity', (src, dst)
        nets[src, dst] = net.eval()
    return nets


def test_torchscript_parity_all_nine_transitions(nine, tmp_path):
    from dery.apis.deploy import export_torchscript, parity, torchscript_runner
    for (src, dst), net in nine.items():
        path = export_torchscript(net, str(tmp_path / f'{src}_{dst}.pt'), (3, 32, 32), batch_size=2)
        diff, scale = parity(net, torchscript_runner(path), (3, 32, 32), (2, ))
        print(f'TorchScript {src:>4} -> {dst:<4} max |diff| {diff:.2e} (logits up to {scale:.2f})')
        assert diff <= 1e-4 and scale > 0.5


def test_onnx_parity_all_nine_transitions(nine, tmp_path):
    pytest.importorskip('onnxruntime', reason='onnxruntime not installed (requirements/optional.txt)')
    pytest.importorskip('onnx', reason='onnx not installed (requirements/optional.txt)')
    from dery.apis.deploy import export_onnx, onnx_runner, parity
    for (src, dst), net in nine.items():
        path = export_onnx(net, str(tmp_path / f'{src}_{dst}.onnx'), (3, 32, 32), batch_size=2)
        diff, scale = parity(net, onnx_runner(path), (3, 32, 32), (2, ))
        print(f'ONNX {src:>4} -> {dst:<4} max |diff| {diff:.2e} (logits up to {scale:.2f})')
        assert diff <= 1e-4 and scale > 0.5


def test_onnx_dynamic_batch_is_checked(nine, tmp_path):
    pytest.importorskip('onnxruntime', reason='onnxruntime not installed (requirements/optional.txt)')
    pytest.importorskip('onnx', reason='onnx not installed (requirements/optional.txt)')
    from dery.apis.deploy import export_onnx, onnx_runner, parity
    from dery.errors import DeryError
    net = nine['cnn', 'vit']
    path = export_onnx(net, str(tmp_path / 'dyn.onnx'), (3, 32, 32), batch_size=2, dynamic_batch=True)
    assert parity(net, onnx_runner(path), (3, 32, 32), (2, 1, 4))[0] <= 1e-4
    # mmpretrain's Swin traces its window partition with the batch size: the check catches it
    net = nine['swin', 'cnn']
    path = export_onnx(net, str(tmp_path / 'dyn_swin.onnx'), (3, 32, 32), batch_size=2, dynamic_batch=True)
    with pytest.raises(DeryError, match='parity check failed'):
        parity(net, onnx_runner(path), (3, 32, 32), (2, 1, 4))


def test_export_tools_on_the_tiny_run(tiny_trained, tmp_path):
    assembled, ckpt = osp.join(tiny_trained, 'assembled.py'), osp.join(tiny_trained, 'iter_2.pth')
    out = str(tmp_path / 'tiny.pt')
    code, stdout, err = run_tool(osp.join(ROOT, 'tools', 'deployment', 'pytorch2torchscript.py'), assembled, ckpt,
                                 '--output-file', out)
    assert code == 0, err[-3000:]
    assert re.search(r'parity: max \|TorchScript - PyTorch\| = \S+ .*: OK', stdout), stdout
    module = torch.jit.load(out)
    assert module(torch.rand(1, 3, 32, 32) * 255).shape == (1, 4)
    if any(importlib_missing(m) for m in ('onnx', 'onnxruntime')):
        pytest.skip('onnx / onnxruntime not installed (requirements/optional.txt): ONNX part skipped')
    out = str(tmp_path / 'tiny.onnx')
    code, stdout, err = run_tool(osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py'), TINY_CONFIG, ckpt,
                                 '--output-file', out, '--softmax')
    assert code == 0, err[-3000:]
    line = re.search(r'parity: max \|ONNX - PyTorch\| = (\S+) ', stdout)
    assert line and float(line.group(1)) <= 1e-4, stdout
    assert osp.isfile(out)


def importlib_missing(name):
    import importlib.util
    return importlib.util.find_spec(name) is None


def test_export_tool_without_onnx_says_so(tiny_trained, monkeypatch):
    import dery.apis.deploy as deploy
    from dery.errors import DeryError

    def missing():
        raise DeryError('ONNX export needs the optional packages onnx and onnxruntime (No module named onnx)')
    monkeypatch.setattr(deploy, '_check_onnx', missing)
    code, _, err = run_tool(osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py'),
                            osp.join(tiny_trained, 'assembled.py'), osp.join(tiny_trained, 'iter_2.pth'))
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert code == 2 and len(lines) == 1 and 'optional packages onnx' in lines[0], err[-2000:]


def test_publish_model_rebuilds_from_the_file_alone(tiny_trained, tmp_path):
    from dery.apis import inference_model, init_model
    out_dir = tmp_path / 'published'
    out_dir.mkdir()
    code, stdout, err = run_tool(osp.join(ROOT, 'tools', 'model_converters', 'publish_model.py'),
                                 osp.join(tiny_trained, 'iter_2.pth'), str(out_dir / 'dery_tiny.pth'))
    assert code == 0, err[-3000:]
    (path, ) = glob.glob(str(out_dir / 'dery_tiny_*.pth'))
    m = re.fullmatch(r'dery_tiny_\d{8}-([0-9a-f]{8})\.pth', osp.basename(path))
    assert m, path
    with open(path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest()[:8] == m.group(1)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    assert ckpt['meta']['dery_assembly']['blocks'] and 'dery_config' in ckpt['meta']
    published = init_model(checkpoint=path)  # nothing else: no config, no work dir
    original = init_model(osp.join(tiny_trained, 'assembled.py'), osp.join(tiny_trained, 'iter_2.pth'))
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    a, b = inference_model(published, image), inference_model(original, image)
    assert a['pred_label'] == b['pred_label'] and np.allclose(a['pred_scores'], b['pred_scores'], atol=1e-6)
    assert a['pred_class'] == f"class_{a['pred_label']}"


# ----------------------------------------------------------------------------------- 3. inference, logging
def test_inference_model_and_mmpretrain_inferencer(tiny_trained, tmp_path):
    import mmcv
    from mmpretrain.apis import ImageClassificationInferencer

    from dery.apis import inference_model, init_model
    assembled, ckpt = osp.join(tiny_trained, 'assembled.py'), osp.join(tiny_trained, 'iter_2.pth')
    image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    mmcv.imwrite(image, str(tmp_path / 'x.png'))
    model = init_model(assembled, ckpt)
    ours = inference_model(model, str(tmp_path / 'x.png'))
    assert set(ours) == {'pred_label', 'pred_score', 'pred_scores', 'pred_class'}
    assert ours['pred_scores'].shape == (4, ) and abs(ours['pred_scores'].sum() - 1) < 1e-5
    theirs = ImageClassificationInferencer(assembled, pretrained=ckpt)(str(tmp_path / 'x.png'))[0]
    assert theirs['pred_label'] == ours['pred_label']
    assert np.allclose(theirs['pred_scores'], ours['pred_scores'], atol=1e-6)
    # the training config: the network is the checkpoint's assembly record
    again = inference_model(TINY_CONFIG, [image, image], checkpoint=ckpt)
    assert len(again) == 2 and np.allclose(again[0]['pred_scores'], ours['pred_scores'], atol=1e-6)


class _Records:
    """The INFO and higher lines of the loggers get_model writes to (mmengine's current MMLogger, DeRy's)."""

    def __enter__(self):
        import logging

        from mmengine.logging import MMLogger

        from dery.utils import get_logger
        self.lines, records = [], self

        class Collect(logging.Handler):
            def emit(self, record):
                records.lines.extend(ln for ln in record.getMessage().splitlines() if ln.strip())
        self.handler = Collect(level=logging.INFO)  # what the console shows
        self.loggers = list({id(lg): lg for lg in (get_logger(), MMLogger.get_current_instance())}.values())
        for lg in self.loggers:
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self.handler)


def test_get_model_is_quiet(tiny_reference, tiny_trained, monkeypatch):
    from dery.apis import get_model
    monkeypatch.delenv('DERY_DEBUG', raising=False)
    with _Records() as rec:
        get_model(TINY_CONFIG, assembly=tiny_trained, pretrained=True)  # the training checkpoint
    assert len(rec.lines) == 1 and re.search(r'get_model: tiny_cpu: ImageClassifier on \d+ blocks .*iter_2\.pth',
                                             rec.lines[0]), rec.lines[:20]
    with _Records() as rec:
        get_model(TINY_CONFIG, assembly=tiny_reference, pretrained=True)  # no checkpoint: mmengine initialises
    assert len(rec.lines) == 1 and 'assembled_init.pth' in rec.lines[0], rec.lines[:20]
    monkeypatch.setenv('DERY_DEBUG', '1')  # mmengine's per-parameter report at debug level
    # mmengine writes that report into the current logger's log file when it has one (an earlier test may
    # have left such a logger current): a fresh current logger without a file shows it on its handlers
    from mmengine.logging import MMLogger
    MMLogger.get_instance(f'test_get_model_is_quiet_{os.getpid()}', logger_name='dery_test')
    with _Records() as rec:
        get_model(TINY_CONFIG, assembly=tiny_reference, pretrained=True)
    assert len(rec.lines) > 20, rec.lines


def test_zoo_build_drops_the_preprocessor_note():
    """mmpretrain's swin config has batch augmentations: its preprocessor logs a `to_onehot` line when
    built; the zoo keeps only the backbone, so the line is dropped (it repeated at every build)."""
    from dery.zoo import build_zoo_model
    with _Records() as rec:
        zm = build_zoo_model('swin_tiny_in1k', pretrained=False)
    assert type(zm.model).__name__ == 'SwinTransformer'
    assert not any('to_onehot' in ln for ln in rec.lines), rec.lines


def test_tensorboard_writes_event_files(tiny_trained):
    if not have_tensorboard():
        pytest.skip('tensorboard not installed (requirements/optional.txt)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events, ) = glob.glob(osp.join(tiny_trained, '*', 'vis_data', 'events.out.tfevents.*'))
    acc = EventAccumulator(events)
    acc.Reload()
    tags = acc.Tags()['scalars']
    assert 'loss' in tags and 'accuracy/top1' in tags, tags
    assert [e.step for e in acc.Scalars('loss')] == [1, 2]


# ----------------------------------------------------------------------------------- 5. catalogue
def test_components_doc_lists_the_registries():
    ns = runpy.run_path(osp.join(ROOT, 'tools', 'components.py'))
    with open(osp.join(ROOT, 'docs', 'components.md'), encoding='utf-8') as f:
        listed = ns['listed'](f.read())
    live = {var: set(mods) for var, _, mods in ns['registries']()}
    for var, names in live.items():
        missing = names - listed.get(var, set())
        assert not missing, (f'registered in dery.registry.{var} but not in docs/components.md: {sorted(missing)}; '
                             'run .venv/bin/python tools/components.py')
    for var, names in listed.items():
        gone = names - live.get(var, set())
        assert not gone, (f'listed in docs/components.md but not registered in dery.registry.{var}: {sorted(gone)}; '
                          'run .venv/bin/python tools/components.py')


# ----------------------------------------------------------------------------------- 6. tools and README
TOOLS = sorted(glob.glob(osp.join(ROOT, 'tools', '*.py')) + glob.glob(osp.join(ROOT, 'tools', '*', '*.py')))
PROBE = ("import runpy, sys; sys.argv = [sys.argv[1], '--help']\n"
         "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
         "heavy = sorted(m for m in ('torch', 'mmpretrain', 'timm') if m in sys.modules)\n"
         "print('PROBE', code, ','.join(heavy) or '-', file=sys.stderr)")


@pytest.mark.parametrize('tool', TOOLS, ids=[osp.relpath(t, ROOT) for t in TOOLS])
def test_tool_help_is_fast(tool):
    """``--help`` imports neither torch nor mmpretrain nor timm, and takes under 1 s of CPU time (wall time on a
    busy machine is longer; CPU time is what an idle one would wait)."""
    import resource
    best = None
    for _ in range(3):  # the best of three
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, '-c', PROBE, tool], cwd=ROOT, env=tiny_env(), capture_output=True,
                              text=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        probe = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith('PROBE ')]
        assert probe and probe[0][1] in ('0', 'None'), proc.stderr[-2000:]
        assert probe[0][2] == '-', f'{tool}: --help imports {probe[0][2]}'
        best = seconds if best is None else min(best, seconds)
        if best < 1.0:
            break
    print(f'{osp.relpath(tool, ROOT)} --help: {best:.2f}s CPU')
    assert best < 1.0, f'{osp.relpath(tool, ROOT)} --help took {best:.2f}s of CPU time'


DOCS = ['README.md', 'docs/train.md', 'docs/extend.md', 'docs/openmmlab.md', 'configs/dery/README.md',
        'projects/example/README.md']


def test_docs_run_tools_with_the_venv_python():
    for doc in DOCS:
        with open(osp.join(ROOT, doc), encoding='utf-8') as f:
            for i, line in enumerate(f, 1):
                assert not re.search(r'(?<![\w/.])python3? (tools|-m pytest)', line), \
                    f'{doc}:{i}: use .venv/bin/python (or activate .venv): {line.strip()}'


def test_readme_counts_the_zoo():
    from dery.zoo import load_zoo
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    m = re.search(r'`model_zoo\.yml` \| the zoo: (\d+) models', text)
    assert m and int(m.group(1)) == len(load_zoo()), m and m.group(0)
