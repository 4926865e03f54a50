"""The offline demo (tools/demo.py): its data sets, the zoo-weight export, and a reduced run end to end.

The end-to-end test runs ``tools/demo.py --quick`` (the same stages and configs with a tiny schedule and
one seed) in a temporary work dir, then checks that the report is complete and that its numbers are the
run's: report table == results.json == each run's own mmengine ``scalars.json``; the assembly within
budget; the plots written; a second run reusing the pre-trained zoo and the finished runs.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ---------------------------------------------------------------------------- data sets
def test_glyphs_deterministic_balanced_and_cached(tmp_path):
    from dery.datasets import ProceduralGlyphDataset
    from dery.datasets.procedural import render_glyphs
    a, la = render_glyphs(48, num_classes=8, image_size=16, seed=3)
    b, lb = render_glyphs(48, num_classes=8, image_size=16, seed=3)
    assert a.shape == (48, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [6] * 8
    test, _ = render_glyphs(48, num_classes=8, image_size=16, seed=3, split='test')
    assert not np.array_equal(a, test)  # other drawings of the same glyphs
    assert a.std() > 10  # something is drawn
    ds = ProceduralGlyphDataset(num_samples=16, num_classes=4, image_size=16, seed=1, cache_dir=str(tmp_path),
                                pipeline=[dict(type='PackInputs')])
    assert len(ds) == 16 and len(list(tmp_path.glob('glyphs_train_*.npz'))) == 1
    again = ProceduralGlyphDataset(num_samples=16, num_classes=4, image_size=16, seed=1, cache_dir=str(tmp_path))
    assert np.array_equal(again.get_data_info(5)['img'], ds.get_data_info(5)['img'])
    assert tuple(ds[0]['inputs'].shape) == (3, 16, 16)
    with pytest.raises(ValueError, match='split'):
        ProceduralGlyphDataset(num_samples=4, split='val')


def test_digits_split():
    pytest.importorskip('sklearn')
    from dery.datasets import SklearnDigitsDataset
    from dery.datasets.digits import load_digits_arrays, split_indices
    _, labels = load_digits_arrays()
    test = split_indices(labels, 'test', train_pool=1000, seed=0)
    train = split_indices(labels, 'train', num_train=200, train_pool=1000, seed=0)
    assert len(test) == 797 and len(train) == 200
    assert not set(test) & set(train)
    assert np.bincount(labels[train]).tolist() == [20] * 10
    small = split_indices(labels, 'train', num_train=50, train_pool=1000, seed=0)
    assert small.tolist() == train[:50].tolist()  # a smaller training set is a prefix
    ds = SklearnDigitsDataset(split='train', num_train=30, image_size=16, pipeline=[dict(type='PackInputs')])
    info = ds.get_data_info(0)
    assert info['img'].shape == (16, 16, 3) and info['img'].dtype == np.uint8
    assert (info['img'][..., 0] == info['img'][..., 2]).all() and info['img'].max() > 100
    assert len(SklearnDigitsDataset(split='test')) == 797
    with pytest.raises(ValueError, match='num_train'):
        SklearnDigitsDataset(split='train', num_train=5000)


def test_shapes_deterministic_balanced_factorised():
    from dery.datasets import ProceduralShapesDataset
    from dery.datasets.shapes import FILLS, SHAPES, render_shapes
    a, la = render_shapes(40, image_size=16, seed=2)
    b, lb = render_shapes(40, image_size=16, seed=2)
    assert a.shape == (40, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [5] * 8 and a.std() > 10
    test, _ = render_shapes(40, image_size=16, seed=2, split='test')
    assert not np.array_equal(a, test)
    ds = ProceduralShapesDataset(split='train', num_samples=16, pipeline=[dict(type='PackInputs')])
    assert ds.metainfo['classes'][:2] == [f'{SHAPES[0]}_{FILLS[0]}', f'{SHAPES[0]}_{FILLS[1]}']
    assert len(ds) == 16 and tuple(ds[3]['inputs'].shape) == (3, 16, 16)
    assert len(ProceduralShapesDataset(split='test')) == 800 and len(ProceduralShapesDataset()) == 160
    with pytest.raises(ValueError, match='split'):
        ProceduralShapesDataset(split='val')


# ---------------------------------------------------------------------------- zoo weights
@pytest.mark.parametrize('entry', [
    dict(name='t_resnet', adapter='mmpretrain', family='cnn', input_size=[3, 16, 16],
         model=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8, out_indices=(3, ))),
    dict(name='t_vit', adapter='timm', family='vit', input_size=[3, 16, 16], model='vit_tiny_patch16_224',
         kwargs=dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)),
], ids=['mmpretrain-resnet', 'timm-vit'])
def test_export_zoo_weights_roundtrip(tmp_path, entry):
    """A trained one-block backbone -> zoo state dict -> the adapter loads it -> the same function."""
    from dery.demo.export import export_zoo_weights
    from dery.models import ReassembledBackbone
    from dery.zoo import build_zoo_model
    torch.manual_seed(0)
    bb = ReassembledBackbone([dict(model=entry['name'], start=0, end=-1)], zoo=[entry], pretrained=False,
                             input_size=(3, 16, 16), stitch_init='random')
    with torch.no_grad():  # "training": move every parameter away from any init
        for p in bb.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = str(tmp_path / 'zoo' / f'{entry["name"]}.pth')
    export_zoo_weights(bb, entry, path, (3, 16, 16))
    loaded = ReassembledBackbone([dict(model=entry['name'], start=0, end=-1)], zoo=[dict(entry, weights=path)],
                                 pretrained=True, input_size=(3, 16, 16), stitch_init='random')
    loaded.out_norms.load_state_dict(bb.out_norms.state_dict())  # the output norm is not part of the zoo model
    x = torch.randn(2, 3, 16, 16)
    bb.eval(), loaded.eval()
    assert torch.allclose(bb(x)[0], loaded(x)[0], atol=1e-5)
    assert set(torch.load(path)) == set(build_zoo_model(entry, pretrained=False).model.state_dict())


# ---------------------------------------------------------------------------- end to end
def _run_demo(work_dir, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS='ignore', HF_HUB_OFFLINE='1', MPLBACKEND='Agg')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--quick', '--no-progress',
                           '--work-dir', str(work_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    return proc.stdout + proc.stderr


def _md_table(text, first_header):
    """Rows (lists of cells) of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f'| {first_header} |'):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith('|'):
                    break
                rows.append([c.strip() for c in row.strip().strip('|').split('|')])
            return rows
    raise AssertionError(f'no table with header {first_header!r} in the report')


@pytest.mark.timeout(900)
def test_demo_quick_end_to_end(tmp_path):
    pytest.importorskip('sklearn')
    from dery.demo.jobs import read_scalars
    from dery.demo.report import fmt_top1
    from dery.utils import human
    work = tmp_path / 'demo'
    out = _run_demo(work)
    for stage in ('stage 1/6 data', 'stage 2/6 pretrain', 'stage 3/6 similarity + partition', 'stage 4/6 assemble',
                  'stage 5/6 fine-tune', 'stage 6/6 report'):
        assert re.search(re.escape(stage) + r': done in [0-9.]+ s', out), f'no timed line for {stage}:\n{out}'
    report = (work / 'report.md').read_text()
    results = json.loads((work / 'results.json').read_text())
    for section in ('## Tasks', '## Zoo', '## Functional similarity', '## Partition', '## Reassembled network',
                    '## Results on the target task', '## Targets', '## Proxy calibration', '## Stage times'):
        assert section in report, f'report lacks {section}'
    # plots exist, are PNGs, and the report links them
    for key in ('similarity', 'partition', 'curves'):
        rel = results['plots'][key]
        assert f']({rel})' in report
        with open(work / rel, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'

    # the zoo: every family pre-trained, weights are plain zoo state dicts
    families = {z['family'] for z in results['zoo']}
    assert families >= {'cnn', 'vit', 'swin'} and len(results['zoo']) >= 4
    for z in results['zoo']:
        assert osp.isfile(work / z['weights']) and not z['cached']

    # partition table == partition.json
    part = json.loads((work / 'dery' / 'partition.json').read_text())
    rows = _md_table(report, 'model | block 0')
    assert [r[0] for r in rows] == list(part['models'])
    for r in rows:
        for j, b in enumerate(part['models'][r[0]]['blocks']):
            assert f'`{b["start"]}`..`{b["end"]}`' in r[j + 1] and r[j + 1].endswith(f'set {b["set"]}')

    # chosen blocks == assembly.json; budget respected
    asm = json.loads((work / 'dery' / 'assembly.json').read_text())
    rows = _md_table(report, 'stage')
    assert [(r[1], r[3]) for r in rows] == [(b['model'], f'`{b["start"]}`..`{b["end"]}`') for b in asm['blocks']]
    pmax, fmax = asm['constraints']['params'][1], asm['constraints']['flops'][1]
    assert asm['params'] <= pmax and asm['flops'] <= fmax
    assert results['assembly']['within_budget'] and results['assembly']['measured_params'] == asm['params']
    assert f'{asm["params"]:,}' in report and f'{pmax:,}' in report
    assert results['largest_zoo_params'] > pmax  # the budget is below the largest zoo model

    # results table == results.json == each run's own scalars.json
    rows = _md_table(report, 'model | init')
    cross = 1 if results['cross_family'] else 0
    assert len(rows) == len(results['results']) == 2 + cross + len(results['zoo'])
    kinds = [r['kind'] for r in results['results']]
    assert kinds[:2] == ['dery', 'scratch'] and kinds[2:2 + cross] == ['cross'] * cross
    assert kinds[2 + cross:] == ['zoo'] * len(results['zoo'])
    for z in results['zoo']:  # every zoo model pre-trained with its family's recipe
        assert set(z['recipe']) >= {'iters', 'lr', 'warmup'} and f'{z["recipe"]["iters"]} it' in report
    for row, res in zip(rows, results['results']):
        label = f'**{res["label"]}**' if res['kind'] == 'dery' else res['label']
        assert row[0] == label and row[2] == human(res['params']) and row[3] == human(res['flops'])
        assert row[4] == fmt_top1(res)
        assert row[5] == ', '.join(f'{v:.2f}' for v in res['top1'])
        for name, top1 in zip(res['runs'], res['top1']):
            run = results['runs'][name]
            curve = read_scalars(work / run['scalars'])
            assert curve['top1'][-1] == [run['max_iters'], top1], name
            assert run['curve'] == curve
    dery_row, scratch_row = results['results'][:2]
    assert dery_row['params'] == scratch_row['params'] == asm['params']
    assert dery_row['flops'] == scratch_row['flops'] == asm['flops']
    assert f'{dery_row["top1_mean"]:.2f} vs {scratch_row["top1_mean"]:.2f}' in report

    # the proxy calibration: every registered proxy in the report's table == calibration.json; the solver's
    # answer is the reassembled model's seed-0 run
    from dery.registry import PROXIES
    PROXIES.import_from_location()
    cal = results['calibration']['tasks']['digits']
    rec = json.loads((work / cal['dir'] / 'calibration.json').read_text())
    assert set(rec['proxies']) == set(PROXIES.module_dict) and len(rec['proxies']) >= 10
    rows = _md_table(report, "proxy | Kendall's tau [95% CI]")
    assert {r[0] for r in rows} == set(rec['proxies'])
    from dery.calibration.report import fmt_ci
    for r in rows:
        t = rec['proxies'][r[0]]
        assert r[1] == fmt_ci(t['tau'], t['tau_ci']) and r[2] == fmt_ci(t['rho'], t['rho_ci'])
    solver = next(x for x in rec['samples'] if x['source'] == 'solver')
    assert solver['top1'] == [results['runs']['dery_s0']['top1']]
    assert results['calibration']['used']['type'] == asm['proxy']['type']
    assert f'**The solver used {asm["proxy"]["type"]}**' in report
    with open(work / cal['plot'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'

    # a second run reuses the pre-trained zoo and the finished runs, and reports the same numbers
    out2 = _run_demo(work)
    assert '0 trained, 4 cached' in out2 and 'runs trained' in out2
    assert re.search(r'fine-tune: done in [0-9.]+ s \(0 runs trained, \d+ cached', out2), out2
    again = json.loads((work / 'results.json').read_text())
    assert [r['top1'] for r in again['results']] == [r['top1'] for r in results['results']]
