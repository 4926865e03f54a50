"""Similarity metrics: properties, NumPy float64 references, streaming convergence."""
import numpy as np
import pytest
import torch

from dery.registry import SIMILARITIES

ALL_TYPES = ['LinearCKA', 'MinibatchCKA', 'RBFCKA', 'LinearRegression', 'SVCCA', 'CCA']


# ----------------------------------------------------------------- references
# Plain NumPy float64, written from the definitions (Kornblith et al. 2019).
def np_gram_linear(x):
    return x @ x.T


def np_gram_rbf(x, threshold=1.0):
    dot = x @ x.T
    sq = np.diag(dot)
    d2 = -2 * dot + sq[:, None] + sq[None, :]
    return np.exp(-d2 / (2 * threshold ** 2 * np.median(d2)))


def np_center_gram(g, unbiased=False):
    g = g.copy()
    n = g.shape[0]
    if unbiased:
        np.fill_diagonal(g, 0)
        means = np.sum(g, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        g -= means[:, None]
        g -= means[None, :]
        np.fill_diagonal(g, 0)
    else:
        h = np.eye(n) - 1.0 / n
        g = h @ g @ h
    return g


def np_cka(gx, gy, unbiased=False):
    gx, gy = np_center_gram(gx, unbiased), np_center_gram(gy, unbiased)
    return gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy))


def np_lr(x1, x2):
    """R^2 of the least squares fit (with intercept) of x1 from x2."""
    x1, x2 = x1 - x1.mean(0), x2 - x2.mean(0)
    w, *_ = np.linalg.lstsq(x2, x1, rcond=None)
    return 1 - ((x1 - x2 @ w) ** 2).sum() / (x1 ** 2).sum()


def np_cca(x, y):
    """(mean squared, mean) canonical correlations."""
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    s = np.linalg.svd(qx.T @ qy, compute_uv=False)
    k = min(x.shape[1], y.shape[1])
    return (s ** 2).sum() / k, s.sum() / k


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    # one intra-op thread: small LAPACK calls stay fast on a busy 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(cfg, fa, fb=None):
    m = SIMILARITIES.build(cfg)
    m.update(fa, fb)
    return m.compute()


def rand_feats(rng, n, dims, related=True):
    base = rng.standard_normal((n, 8))
    out = []
    for d in dims:
        x = rng.standard_normal((n, d))
        if related:
            x = x + base @ rng.standard_normal((8, d))
        out.append(torch.from_numpy(x.astype(np.float32)))
    return out


# ----------------------------------------------------------------- interface
@pytest.mark.parametrize('typ', ALL_TYPES)
def test_interface_shape_reset_and_registry(typ):
    rng = np.random.default_rng(0)
    fa = rand_feats(rng, 24, [3, 5, 7])
    fb = [f.reshape(24, -1) for f in rand_feats(rng, 24, [4, 6])]
    fb[1] = fb[1].reshape(24, 2, 3)  # any trailing shape, flattened per sample
    m = SIMILARITIES.build(dict(type=typ))
    m.update(fa, fb)
    out = m.compute()
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    m.reset()
    with pytest.raises(RuntimeError):
        m.compute()
    with pytest.raises(ValueError, match='same'):
        m.update(fa, [torch.randn(23, 4)])
    with pytest.raises(TypeError):
        m.update(torch.randn(24, 3), fb)


def test_unknown_type_lists_choices():
    with pytest.raises(KeyError, match='LinearCKA'):
        SIMILARITIES.build(dict(type='LinearCKAA'))


@pytest.mark.parametrize('typ', ALL_TYPES)
def test_symmetric_update_equals_pairwise(typ):
    rng = np.random.default_rng(1)
    f = rand_feats(rng, 32, [3, 9, 4])
    np.testing.assert_allclose(run(dict(type=typ), f).numpy(), run(dict(type=typ), f, f).numpy(),
                               atol=1e-12)


@pytest.mark.parametrize('typ', ['LinearCKA', 'RBFCKA', 'LinearRegression', 'SVCCA'])
def test_several_updates_accumulate(typ):
    rng = np.random.default_rng(2)
    fa, fb = rand_feats(rng, 40, [3, 6]), rand_feats(rng, 40, [5])
    m = SIMILARITIES.build(dict(type=typ))
    for s in (slice(0, 15), slice(15, 31), slice(31, 40)):
        m.update([f[s] for f in fa], [f[s] for f in fb])
    np.testing.assert_allclose(m.compute().numpy(), run(dict(type=typ), fa, fb).numpy(), atol=1e-12)


# ----------------------------------------------------------------- CKA properties
@pytest.mark.parametrize('cfg', [dict(type='LinearCKA'), dict(type='LinearCKA', unbiased=True),
                                 dict(type='MinibatchCKA'), dict(type='RBFCKA'),
                                 dict(type='LinearCKA', dtype='float32')])
def test_cka_identity_scaling_orthogonal(cfg):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((64, 12)))
    y = torch.from_numpy(rng.standard_normal((64, 7))) + x[:, :7]
    q, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((12, 12))))
    atol = 1e-5 if cfg.get('dtype') == 'float32' else 1e-10
    out = run(cfg, [x, y], [x, 3.7 * x, x @ q, y])
    assert torch.allclose(out[0, :3], torch.ones(3, dtype=out.dtype), atol=atol)  # identical,
    # isotropic scaling, orthogonal transform
    assert torch.allclose(out[1, 3], torch.ones((), dtype=out.dtype), atol=atol)
    assert 0 < out[0, 3] < 1
    # the value for (x, y) is unchanged when y is scaled / rotated
    q2, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((7, 7))))
    moved = run(cfg, [x], [0.01 * y @ q2])
    assert torch.allclose(moved[0, 0], out[0, 3], atol=atol)


@pytest.mark.parametrize('n,dims', [(200, [3, 10, 30]), (40, [150, 220, 90])])  # feature / Gram route
@pytest.mark.parametrize('unbiased', [False, True])
def test_linear_cka_matches_numpy(n, dims, unbiased):
    rng = np.random.default_rng(4)
    fa, fb = rand_feats(rng, n, dims), rand_feats(rng, n, dims[::-1][:2])
    out = run(dict(type='LinearCKA', unbiased=unbiased), fa, fb).numpy()
    ref = np.array([[np_cka(np_gram_linear(a.double().numpy()), np_gram_linear(b.double().numpy()),
                            unbiased) for b in fb] for a in fa])
    assert np.abs(out - ref).max() < 1e-6
    # float32 compute is close too
    out32 = run(dict(type='LinearCKA', unbiased=unbiased, dtype='float32'), fa, fb).numpy()
    assert np.abs(out32 - ref).max() < 1e-4


@pytest.mark.parametrize('unbiased', [False, True])
def test_rbf_cka_matches_numpy(unbiased):
    rng = np.random.default_rng(5)
    fa, fb = rand_feats(rng, 50, [4, 20]), rand_feats(rng, 50, [6, 3])
    out = run(dict(type='RBFCKA', threshold=0.5, unbiased=unbiased), fa, fb).numpy()
    ref = np.array([[np_cka(np_gram_rbf(a.double().numpy(), 0.5), np_gram_rbf(b.double().numpy(), 0.5),
                            unbiased) for b in fb] for a in fa])
    assert np.abs(out - ref).max() < 1e-6


def test_linear_regression_matches_numpy_and_is_asymmetric():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((120, 4))
    fa = [torch.from_numpy(x), torch.from_numpy(rng.standard_normal((120, 9)))]
    fb = [torch.from_numpy(x @ rng.standard_normal((4, 10)) + 0.5 * rng.standard_normal((120, 10))),
          torch.from_numpy(rng.standard_normal((120, 3)))]
    out = run(dict(type='LinearRegression'), fa, fb).numpy()
    ref = np.array([[np_lr(a.numpy(), b.numpy()) for b in fb] for a in fa])
    assert np.abs(out - ref).max() < 1e-6
    sym = run(dict(type='LinearRegression'), [fa[0][:, :2], fa[0]]).numpy()
    assert abs(sym[0, 1] - 1) < 1e-10 and sym[1, 0] < 0.8  # a part from the whole: exact fit
    # center=False is the original code's uncentred lr: ||Q2^T x1||^2 / ||x1||^2
    q, _ = np.linalg.qr(fb[0].numpy())
    raw = run(dict(type='LinearRegression', center=False), fa[:1], fb[:1]).item()
    assert abs(raw - np.linalg.norm(q.T @ x) ** 2 / np.linalg.norm(x) ** 2) < 1e-10


@pytest.mark.parametrize('mean,idx', [('squared', 0), ('linear', 1)])
def test_cca_matches_numpy(mean, idx):
    rng = np.random.default_rng(7)
    fa, fb = rand_feats(rng, 90, [5, 12]), rand_feats(rng, 90, [7, 3])
    out = run(dict(type='CCA', mean=mean), fa, fb).numpy()
    ref = np.array([[np_cca(a.double().numpy(), b.double().numpy())[idx] for b in fb] for a in fa])
    assert np.abs(out - ref).max() < 1e-6
    # SVCCA with keep=1 is CCA; keep<1 drops directions (values stay in [0, 1])
    np.testing.assert_allclose(run(dict(type='SVCCA', keep=1.0, mean=mean), fa, fb).numpy(), out,
                               atol=1e-12)
    sv = run(dict(type='SVCCA', keep=0.5, mean=mean), fa, fb).numpy()
    assert ((sv >= 0) & (sv <= 1 + 1e-9)).all()


# ----------------------------------------------------------------- streaming
def test_minibatch_cka_converges_to_exact_unbiased():
    rng = np.random.default_rng(8)
    n = 2048
    x = rng.standard_normal((n, 24))
    y = np.tanh(x[:, :12] @ rng.standard_normal((12, 16))) + 0.7 * rng.standard_normal((n, 16))
    z = rng.standard_normal((n, 10)) + 0.3 * x[:, :10]
    feats = [torch.from_numpy(a) for a in (x, y, z)]
    exact = run(dict(type='LinearCKA', unbiased=True), feats)
    errors = []
    sampler = np.random.default_rng(9)
    for num_batches in (2, 16, 256):
        m = SIMILARITIES.build(dict(type='MinibatchCKA'))
        for _ in range(num_batches):
            idx = torch.from_numpy(sampler.choice(n, 64, replace=False))
            m.update([f[idx] for f in feats])
        errors.append((m.compute() - exact).abs().max().item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.01, errors
    # one epoch of disjoint batches of the whole set is close as well
    m = SIMILARITIES.build(dict(type='MinibatchCKA'))
    for s in range(0, n, 128):
        m.update([f[s:s + 128] for f in feats])
    assert (m.compute() - exact).abs().max() < 0.02


def test_minibatch_cka_state_merges_by_summing():
    rng = np.random.default_rng(10)
    feats = rand_feats(rng, 96, [5, 8, 3])
    one = SIMILARITIES.build(dict(type='MinibatchCKA'))
    for s in range(0, 96, 16):
        one.update([f[s:s + 16] for f in feats])
    a, b = (SIMILARITIES.build(dict(type='MinibatchCKA')) for _ in range(2))
    a.init_state(3)
    b.init_state(3)
    for k, s in enumerate(range(0, 96, 16)):
        (a if k % 2 == 0 else b).update([f[s:s + 16] for f in feats])
    for ta, tb in zip(a.accumulators().values(), b.accumulators().values()):
        ta += tb
    np.testing.assert_allclose(a.compute().numpy(), one.compute().numpy(), atol=1e-12)
    c = SIMILARITIES.build(dict(type='MinibatchCKA'))
    c.load_state_dict(a.state_dict())
    np.testing.assert_allclose(c.compute().numpy(), one.compute().numpy(), atol=1e-12)


def test_minibatch_cka_skips_batches_below_four():
    m = SIMILARITIES.build(dict(type='MinibatchCKA'))
    f = [torch.randn(40, 5), torch.randn(40, 3)]
    m.update([t[:32] for t in f])
    ref = m.compute().clone()
    m.update([t[32:35] for t in f])  # 3 samples: skipped
    assert torch.equal(m.compute(), ref)


# ----------------------------------------------------------------- constant features
@pytest.mark.parametrize('typ', ALL_TYPES)
def test_constant_features_give_zero_not_nan(typ):
    n = 32
    const = torch.full((n, 6), 0.1)
    zeros = torch.zeros(n, 2, 2)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0))
    out = run(dict(type=typ), [const, zeros, x], [const, x])
    assert torch.isfinite(out).all()
    assert (out[:2] == 0).all() and (out[:, 0] == 0).all()  # constant vs anything, itself included
    if typ != 'MinibatchCKA':  # a single batch of noise: the unbiased estimate is noisy
        assert out[2, 1] > 0.99
