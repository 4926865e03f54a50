"""compute_similarity: outputs, capture, caching, resume and corrupted caches."""
import contextlib
import json
import logging
import os
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from dist_similarity_worker import build_tiny_zoo  # noqa: E402

from dery.registry import SIMILARITIES  # noqa: E402
from dery.similarity import ProbeSet, SimilarityResult, compute_similarity  # noqa: E402
from dery.zoo.layout import pool as pool_output  # noqa: E402
from dery.similarity.capture import model_key  # noqa: E402
from dery.utils import get_logger  # noqa: E402

# 48 of 96 images: 3 batches of 16
PROBE = dict(dataset=dict(type='SyntheticImageDataset', num_samples=96, num_classes=4, image_size=32,
                          pipeline=[dict(type='PackInputs')], serialize_data=False), batch_size=16,
             num_samples=48)
QUIET = dict(plot=False, progress=False)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    # Correctness tests: one intra-op thread keeps them fast on a busy 2-core machine
    # (OpenMP threads spin-wait for a descheduled sibling).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def zoo():
    return build_tiny_zoo()


@pytest.fixture(scope='module')
def ref_dir(zoo, tmp_path_factory):
    """A finished LinearCKA run (features cached, plots written)."""
    wd = str(tmp_path_factory.mktemp('ref'))
    compute_similarity(zoo, PROBE, dict(type='LinearCKA', progress=False), wd)
    return wd


@pytest.fixture(scope='module')
def ref_stream(zoo, tmp_path_factory):
    """The MinibatchCKA result of an uninterrupted accumulator run."""
    wd = str(tmp_path_factory.mktemp('ref_stream'))
    res = compute_similarity(zoo, PROBE, dict(type='MinibatchCKA', store='accumulators', **QUIET), wd)
    res.work_dir = wd
    return res


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


@contextlib.contextmanager
def count_forwards(models):
    counts = {m.name: 0 for m in models}
    handles = []
    for m in models:
        def hook(mod, args, name=m.name):
            counts[name] += 1
        handles.append(m.model.register_forward_pre_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def log_warnings():
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    logger = get_logger()
    h = Catch()
    logger.addHandler(h)
    try:
        yield records
    finally:
        logger.removeHandler(h)


def feature_files(work_dir):
    root = osp.join(work_dir, 'similarity_cache', 'features')
    return sorted(os.listdir(root)) if osp.isdir(root) else []


# ----------------------------------------------------------------- outputs
def test_outputs_and_values(zoo, ref_dir):
    wd = ref_dir
    res = SimilarityResult.load(wd)
    names = [m.name for m in zoo]
    assert res.type == 'LinearCKA' and res.models == names
    assert set(res.matrices) == {(a, b) for a in names for b in names}
    for m in zoo:
        assert res.nodes[m.name] == list(m.nodes)
        np.testing.assert_allclose(np.diag(res.matrices[(m.name, m.name)]), 1, atol=1e-9)
    for a in names:
        for b in names:
            mat = res.matrices[(a, b)]
            assert mat.shape == (len(res.nodes[a]), len(res.nodes[b])) and np.isfinite(mat).all()
            np.testing.assert_allclose(mat, res.matrices[(b, a)].T, atol=1e-12)
    assert res.meta['probe']['num_samples'] == 48
    assert sorted(res.meta['captured']) == sorted(names)

    # the files people use
    for f in ('similarity.npz', 'similarity.json', 'similarity_summary.png'):
        assert osp.getsize(osp.join(wd, f)) > 0
    pngs = sorted(os.listdir(osp.join(wd, 'similarity')))
    assert len(pngs) == 6 and 'tiny_resnet__tiny_vit.png' in pngs  # unordered pairs + self
    index = json.load(open(osp.join(wd, 'similarity.json')))
    assert index['models'] == names and index['nodes']['tiny_vit'] == list(zoo[1].nodes)
    with np.load(osp.join(wd, 'similarity.npz')) as data:
        np.testing.assert_array_equal(data['all'], res.full())

    # the stage equals the metric applied to features captured by hand
    probe = ProbeSet(PROBE)
    feats = []
    for m in zoo:
        per_node = [[] for _ in m.nodes]
        for _, x in probe.iter_batches(range(len(probe))):
            with torch.no_grad():
                outs = m.node_outputs(x)
            for k, o in enumerate(outs.values()):
                per_node[k].append(pool_output(o, m.family, 'avg'))
        feats += [torch.cat(p) for p in per_node]
    metric = SIMILARITIES.build(dict(type='LinearCKA'))
    metric.update(feats)
    np.testing.assert_allclose(res.full(), metric.compute().numpy(), atol=1e-9)

    # a second call with the same inputs reuses the saved result, runs no model
    with count_forwards(zoo) as counts:
        again = compute_similarity(zoo, PROBE, dict(type='LinearCKA', **QUIET), wd)
    assert sum(counts.values()) == 0 and again.meta['cached']
    np.testing.assert_array_equal(again.full(), res.full())


def test_streaming_stores_agree_and_accumulators_keep_no_features(zoo, ref_dir, ref_stream, tmp_path):
    wd = copy_of(ref_dir, tmp_path / 'a')
    with count_forwards(zoo) as counts:  # MinibatchCKA streams over the cached features
        a = compute_similarity(zoo, PROBE, dict(type='MinibatchCKA', **QUIET), wd)
    assert sum(counts.values()) == 0
    np.testing.assert_allclose(a.full(), ref_stream.full(), atol=1e-10)
    assert feature_files(ref_stream.work_dir) == []
    cache = osp.join(ref_stream.work_dir, 'similarity_cache')
    assert not osp.isdir(cache) or not os.listdir(cache)  # no checkpoint left at the end
    with pytest.raises(ValueError, match='streaming'):
        compute_similarity(zoo, PROBE, dict(type='LinearCKA', store='accumulators', **QUIET),
                           str(tmp_path / 'c'))


def test_other_metrics_and_pooling_run(zoo, ref_dir, tmp_path):
    wd = copy_of(ref_dir, tmp_path / 'm')
    with count_forwards(zoo) as counts:  # the cached features serve every metric
        for cfg in (dict(type='RBFCKA'), dict(type='LinearRegression')):
            res = compute_similarity(zoo, PROBE, dict(cfg, **QUIET), wd)
            assert res.type == cfg['type'] and np.isfinite(res.full()).all()
    assert sum(counts.values()) == 0
    assert np.abs(res.full() - res.full().T).max() > 1e-3  # LinearRegression is not symmetric
    res = compute_similarity(zoo[1:2], PROBE, dict(type='SVCCA', pooling='avg_patch', **QUIET), wd)
    assert np.isfinite(res.full()).all()
    res = compute_similarity(zoo[1:], dict(PROBE, num_samples=32),
                             dict(type='MinibatchCKA', pooling='flatten', store='accumulators',
                                  **QUIET), wd)
    assert res.full().shape == (len(zoo[1].nodes) + len(zoo[2].nodes), ) * 2


# ----------------------------------------------------------------- resume
class Killed(RuntimeError):
    pass


@contextlib.contextmanager
def kill_at_batch(model, batch):
    calls = [0]

    def hook(mod, args):
        calls[0] += 1
        if calls[0] > batch:
            raise Killed('simulated kill')
    h = model.model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        h.remove()


@pytest.mark.parametrize('store,typ', [('features', 'LinearCKA'), ('accumulators', 'MinibatchCKA')])
def test_killed_run_resumes(zoo, ref_dir, ref_stream, tmp_path, store, typ):
    cfg = dict(type=typ, store=store, checkpoint_interval=1, **QUIET)
    ref = ref_stream if store == 'accumulators' else SimilarityResult.load(ref_dir)
    wd = str(tmp_path / 'run')
    with kill_at_batch(zoo[1], 2), pytest.raises(Killed):  # dies in the 3rd and last batch
        compute_similarity(zoo, PROBE, cfg, wd)
    assert not osp.exists(osp.join(wd, 'similarity.npz'))
    with count_forwards(zoo) as counts:
        res = compute_similarity(zoo, PROBE, cfg, wd)
    # models run one after the other: the first one is finished and reused, the second resumes
    # at its last checkpoint (only the batch that was lost), the third had not started
    assert counts == {zoo[0].name: 0, zoo[1].name: 1, zoo[2].name: 3}
    np.testing.assert_allclose(res.full(), ref.full(), atol=1e-10)
    if store == 'features':
        assert not any('partial' in f for f in feature_files(wd))


def test_finished_models_are_not_redone(zoo, ref_dir, tmp_path):
    wd = copy_of(ref_dir, tmp_path / 'f')
    for f in feature_files(wd):  # as if an earlier run had only the first two models
        if f.startswith(zoo[2].name):
            os.remove(osp.join(wd, 'similarity_cache', 'features', f))
    first = SimilarityResult.load(wd)
    os.remove(osp.join(wd, 'similarity.json'))
    with count_forwards(zoo) as counts:
        res = compute_similarity(zoo, PROBE, dict(type='LinearCKA', **QUIET), wd)
    assert counts == {zoo[0].name: 0, zoo[1].name: 0, zoo[2].name: 3}
    key = (zoo[0].name, zoo[1].name)
    np.testing.assert_allclose(res.matrices[key], first.matrices[key], atol=1e-12)
    # another metric on the same models and probe data reuses the features too
    with count_forwards(zoo) as counts:
        compute_similarity(zoo, PROBE, dict(type='MinibatchCKA', **QUIET), wd)
    assert sum(counts.values()) == 0


def test_cache_keys_follow_weights_and_probe(zoo, tmp_path):
    k0 = model_key(zoo[0])
    p = next(zoo[0].model.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
        try:
            assert model_key(zoo[0]) != k0
        finally:
            p.copy_(saved)
    assert model_key(zoo[0]) == k0
    assert ProbeSet(PROBE).key != ProbeSet(dict(PROBE, seed=1)).key
    assert ProbeSet(PROBE).key == ProbeSet(dict(PROBE)).key


# ----------------------------------------------------------------- corruption
def _corrupt(path, how):
    if how == 'flip':
        with open(path, 'r+b') as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(8)
            f.seek(-8, 1)
            f.write(bytes(x ^ 0xFF for x in b))
    elif how == 'truncate':
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        with open(path, 'w') as f:
            f.write('{not json')


@pytest.mark.parametrize('how', ['flip', 'truncate', 'manifest'])
def test_corrupted_feature_cache_is_recomputed(zoo, ref_dir, tmp_path, how):
    wd = copy_of(ref_dir, tmp_path / 'c')
    ref = SimilarityResult.load(ref_dir)
    victim = [f for f in feature_files(wd) if f.startswith(zoo[1].name)]
    target = [f for f in victim if f.endswith('.json' if how == 'manifest' else '.npy')][0]
    _corrupt(osp.join(wd, 'similarity_cache', 'features', target), how)
    os.remove(osp.join(wd, 'similarity.json'))  # force the stage to look at the features
    with log_warnings() as warns, count_forwards(zoo) as counts:
        res = compute_similarity(zoo, PROBE, dict(type='LinearCKA', **QUIET), wd)
    assert any(zoo[1].name in w and 'recomputing' in w for w in warns), warns
    assert counts == {zoo[0].name: 0, zoo[1].name: 3, zoo[2].name: 0}
    np.testing.assert_allclose(res.full(), ref.full(), atol=1e-12)


def test_corrupted_result_and_checkpoints_are_recomputed(zoo, ref_dir, ref_stream, tmp_path):
    wd = copy_of(ref_dir, tmp_path / 'r')
    ref = SimilarityResult.load(ref_dir)
    _corrupt(osp.join(wd, 'similarity.npz'), 'flip')
    with pytest.raises(ValueError, match='corrupted'):
        SimilarityResult.load(wd)
    with log_warnings() as warns, count_forwards(zoo) as counts:
        res = compute_similarity(zoo, PROBE, dict(type='LinearCKA', **QUIET), wd)
    assert any('corrupted' in w for w in warns) and sum(counts.values()) == 0
    np.testing.assert_allclose(res.full(), ref.full(), atol=1e-12)

    # a corrupted unfinished capture starts that model over
    wd2 = str(tmp_path / 'partial')
    cfg = dict(type='LinearCKA', checkpoint_interval=1, **QUIET)
    with kill_at_batch(zoo[0], 2), pytest.raises(Killed):
        compute_similarity(zoo, PROBE, cfg, wd2)
    partial = [f for f in feature_files(wd2) if f.startswith('.' + zoo[0].name) and f.endswith('.npy')]
    _corrupt(osp.join(wd2, 'similarity_cache', 'features', partial[0]), 'flip')
    with log_warnings() as warns, count_forwards(zoo) as counts:
        res2 = compute_similarity(zoo, PROBE, cfg, wd2)
    assert any('starting it over' in w for w in warns), warns
    assert counts == {zoo[0].name: 3, zoo[1].name: 3, zoo[2].name: 3}  # the others had not started
    np.testing.assert_allclose(res2.full(), ref.full(), atol=1e-12)

    # a corrupted unfinished Gram-matrix capture (store='accumulators') starts that model over
    wd3 = str(tmp_path / 'stream')
    cfg = dict(type='MinibatchCKA', store='accumulators', checkpoint_interval=1, **QUIET)
    ref3 = ref_stream
    with kill_at_batch(zoo[0], 2), pytest.raises(Killed):
        compute_similarity(zoo, PROBE, cfg, wd3)
    grams = osp.join(wd3, 'similarity_cache', 'grams')
    ckpt = [f for f in os.listdir(grams) if f.startswith('.' + zoo[0].name) and f.endswith('.npy')]
    _corrupt(osp.join(grams, ckpt[0]), 'truncate')
    with log_warnings() as warns, count_forwards(zoo) as counts:
        res3 = compute_similarity(zoo, PROBE, cfg, wd3)
    assert any('unusable' in w for w in warns) and counts[zoo[0].name] == 3
    np.testing.assert_allclose(res3.full(), ref3.full(), atol=1e-10)


# ----------------------------------------------------------------- probe / pooling
def test_probe_subset_and_batches():
    from dery.registry import DATASETS
    dataset = DATASETS.build(dict(PROBE['dataset'], num_samples=960))  # a built dataset works too
    full = dict(PROBE, dataset=dataset, num_samples=None)
    p = ProbeSet(full)
    assert p.num_samples == 48 and [len(b) for b in p.batches] == [16, 16, 16]  # 1/20 by default
    assert ProbeSet(dict(full, num_samples=40)).num_samples == 40
    assert ProbeSet(dict(full, num_samples=0.1)).num_samples == 96
    with pytest.raises(ValueError, match='more than the 960 samples'):  # never truncated silently
        ProbeSet(dict(full, num_samples=5000))
    assert list(ProbeSet(full).indices) == list(p.indices)
    assert list(ProbeSet(dict(full, seed=1)).indices) != list(p.indices)
    assert ProbeSet(dict(PROBE, num_samples=None)).num_samples == 16  # 1/20 of 96 is 4: one batch
    with pytest.raises(ValueError):
        ProbeSet(dict(PROBE, num_samples=-3))
    with pytest.raises(ValueError, match='dataset'):
        ProbeSet(dict(batch_size=4))
    _, x = next(p.iter_batches([0]))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and abs(float(x.mean())) < 2


def test_pool_output_layouts():
    cnn = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(pool_output(cnn, 'cnn'), cnn.mean((2, 3)))
    assert torch.equal(pool_output(cnn, 'cnn', 'max'), cnn.amax((2, 3)))
    assert pool_output(cnn, 'cnn', 'flatten').shape == (2, 60)
    swin = cnn.permute(0, 2, 3, 1)  # [B, H, W, C]
    assert torch.equal(pool_output(swin, 'swin'), cnn.mean((2, 3)))
    vit = torch.randn(2, 5, 8)  # 1 class token + 4 patches
    assert torch.allclose(pool_output(vit, 'vit'), vit.mean(1))
    assert torch.allclose(pool_output(vit, 'vit', 'avg_patch', prefix_tokens=1), vit[:, 1:].mean(1))
    with pytest.raises(ValueError):
        pool_output(vit, 'vit', 'median')


def test_without_work_dir_nothing_is_kept(zoo, ref_dir):
    res = compute_similarity(zoo[1:2], PROBE, dict(type='LinearCKA', **QUIET), None)
    ref = SimilarityResult.load(ref_dir)
    key = (zoo[1].name, zoo[1].name)
    np.testing.assert_allclose(res.matrices[key], ref.matrices[key], atol=1e-12)


def test_bad_inputs_are_explained(zoo, tmp_path):
    with pytest.raises(ValueError, match='unique'):
        compute_similarity([zoo[0], zoo[0]], PROBE, dict(type='LinearCKA', **QUIET), str(tmp_path))
    with pytest.raises(ValueError, match='store'):
        compute_similarity(zoo, PROBE, dict(type='LinearCKA', store='disk', **QUIET), str(tmp_path))
    with pytest.raises(KeyError, match='MinibatchCKA'):
        compute_similarity(zoo, PROBE, dict(type='CKA', **QUIET), str(tmp_path))


def test_heatmaps_drawn_by_workers_equal_those_drawn_here(tmp_path):
    """save_plots deals the pair heatmaps to forked workers (a large zoo has hundreds): the same files,
    byte for byte, as drawing them in this process."""
    from dery.similarity.plot import plot_pair, save_plots
    nodes = {f'm{i}': [f'n{k}' for k in range(3 + i)] for i in range(6)}  # 21 unordered pairs
    n = sum(len(v) for v in nodes.values())
    res = SimilarityResult.from_full(np.random.default_rng(0).random((n, n)), nodes, 'LinearCKA')
    done = []
    paths = save_plots(res, str(tmp_path / 'w'), on_file=lambda: done.append(1), workers=2)
    assert len(paths) == len(done) == 22 and len(set(paths)) == 22
    assert sorted(os.listdir(tmp_path / 'w' / 'similarity')) == sorted(osp.basename(p) for p in paths[1:])
    for a, b in (('m0', 'm5'), ('m3', 'm3')):
        here = str(tmp_path / f'{a}_{b}.png')
        plot_pair(res.matrices[(a, b)], nodes[a], nodes[b], a, b, res.type, here)
        with open(here, 'rb') as f1, open(tmp_path / 'w' / 'similarity' / f'{a}__{b}.png', 'rb') as f2:
            assert f1.read() == f2.read()
