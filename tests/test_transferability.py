"""Transferability proxies (LogME, HScore, TransRate, GBC) against independent
dense/naive computations on tiny data, plus end-to-end scoring of a tiny
ImageClassifier with its state left exactly as found."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from dery.proxies import GBC, HScore, LogME, TransRate
from dery.registry import MODELS, PROXIES

NAMES = ['LogME', 'HScore', 'TransRate', 'GBC']
SMALL = dict(num_batches=2, batch_size=12, seed=0, device='cpu')


def blobs(n=36, d=6, k=3, sep=3.0, seed=0):
    """Gaussian class blobs: labels 0..k-1 in turn, class means ``sep`` apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = sep * rng.normal(size=(k, d))
    return centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d), y


# ------------------------------------------------------------------ LogME
def direct_logme(F, y):
    """Maximise log N(y; 0, I / beta + F F^T / alpha) over (log alpha, log beta)."""
    n = F.shape[0]
    K = F @ F.T
    out = []
    for c in np.unique(y):
        t = (y == c).astype(float)

        def nll(p):
            cov = np.exp(-p[1]) * np.eye(n) + np.exp(-p[0]) * K
            return -multivariate_normal.logpdf(t, np.zeros(n), cov)

        runs = [minimize(nll, x0, method='Nelder-Mead',
                         options=dict(xatol=1e-10, fatol=1e-12, maxiter=5000))
                for x0 in ([0.0, 0.0], [3.0, 3.0], [-3.0, 1.0])]
        out.append(-min(r.fun for r in runs))
    return float(np.mean(out)) / n


# an interior maximum; D > n (beta large); random wide features (maximum at alpha = inf)
@pytest.mark.parametrize('n,d,sep', [(40, 5, 1.5), (12, 20, 1.5), (30, 50, 0.0)])
def test_logme_matches_direct_evidence_maximisation(n, d, sep):
    F, y = blobs(n, d, sep=sep, seed=n)
    assert LogME().estimate(F, y) == pytest.approx(direct_logme(F, y), rel=1e-6, abs=1e-9)


def test_logme_scale_invariant_and_zero_feature_limit():
    F, y = blobs(30, 4, sep=1.0, seed=3)
    ref = LogME().estimate(F, y)
    for c in (1e-4, 1e4):
        assert LogME().estimate(c * F, y) == pytest.approx(ref, rel=1e-7)
    # all-zero features: the alpha = inf evidence -n/2 (log(2 pi n_k / n) + 1), per class
    n = len(y)
    counts = np.bincount(y)
    expected = np.mean([-0.5 * n * (math.log(2 * math.pi * nk / n) + 1) for nk in counts]) / n
    assert LogME().estimate(np.zeros((n, 4)), y) == pytest.approx(expected, rel=1e-12)
    # features that encode the labels exactly: capped, finite, highest
    onehot = LogME().estimate(np.eye(3)[y], y)
    assert math.isfinite(onehot) and onehot > ref


# ------------------------------------------------------------------ HScore
def naive_hscore(F, y, shrink=None):
    n, D = F.shape
    mu = F.mean(0)
    cov = sum(np.outer(f - mu, f - mu) for f in F) / n
    g = np.zeros_like(F)  # each sample replaced by its class mean
    for c in np.unique(y):
        g[y == c] = F[y == c].mean(0)
    cov_g = sum(np.outer(v - mu, v - mu) for v in g) / n
    if shrink is None:
        return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ cov_g))
    shrunk = (1 - shrink) * cov + shrink * np.trace(cov) / D * np.eye(D)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - shrink) * cov_g)))


def naive_ledoit_wolf(X):
    """Ledoit & Wolf (2004), Lemma 3.2-3.4, with explicit per-sample loops."""
    n, D = X.shape
    X = X - X.mean(0)
    S = X.T @ X / n
    m = np.trace(S) / D
    d2 = np.sum((S - m * np.eye(D)) ** 2) / D
    b2 = sum(np.sum((np.outer(x, x) - S) ** 2) for x in X) / D / n ** 2
    return min(b2, d2) / d2


def test_hscore_matches_pinv_and_per_class_loops():
    F, y = blobs(40, 6, seed=1)
    assert HScore(shrinkage=None).estimate(F, y) == pytest.approx(naive_hscore(F, y), rel=1e-9)
    assert HScore(shrinkage=0.3).estimate(F, y) == pytest.approx(
        naive_hscore(F, y, 0.3), rel=1e-9)
    a = naive_ledoit_wolf(F)
    assert 0 < a < 1
    assert HScore().estimate(F, y) == pytest.approx(naive_hscore(F, y, a), rel=1e-9)
    # D >= n - 1: the plain H-score is K - 1 whatever the features; shrinkage is not
    W, yw = blobs(10, 30, seed=2)
    assert HScore(shrinkage=None).estimate(W, yw) == pytest.approx(2.0, rel=1e-9)
    assert naive_hscore(W, yw) == pytest.approx(2.0, rel=1e-9)
    assert HScore().estimate(W, yw) == pytest.approx(
        naive_hscore(W, yw, naive_ledoit_wolf(W)), rel=1e-9)


def test_hscore_ledoit_wolf_agrees_with_sklearn():
    covariance = pytest.importorskip('sklearn.covariance')
    F, y = blobs(25, 8, seed=4)
    a = covariance.LedoitWolf().fit(F).shrinkage_
    assert naive_ledoit_wolf(F) == pytest.approx(a, rel=1e-10)
    assert HScore().estimate(F, y) == pytest.approx(naive_hscore(F, y, a), rel=1e-9)


# ------------------------------------------------------------------ TransRate
def naive_rate(Z, eps_sq):
    n, d = Z.shape
    sign, logdet = np.linalg.slogdet(np.eye(d) + d / (n * eps_sq) * Z.T @ Z)
    assert sign > 0
    return 0.5 * logdet


@pytest.mark.parametrize('weights', ['uniform', 'frequency'])
@pytest.mark.parametrize('normalize', [False, True])
def test_transrate_matches_dense_logdet(weights, normalize):
    F, y = blobs(31, 5, seed=5)  # 11/10/10: the two weightings differ
    eps = 1e-3
    d = F.shape[1]
    Z = F - F.mean(0)
    if normalize:
        Z = Z / np.sqrt(np.mean(np.sum(Z ** 2, 1)))
    R = naive_rate(Z, d * eps)  # the paper's distortion e^2 = d * eps
    classes = np.unique(y)
    w = {c: (1 / len(classes) if weights == 'uniform' else np.mean(y == c)) for c in classes}
    Rc = sum(w[c] * naive_rate(Z[y == c], d * eps) for c in classes)
    proxy = TransRate(eps=eps, class_weights=weights, normalize=normalize)
    assert proxy.estimate(F, y) == pytest.approx(R - Rc, rel=1e-9)
    if normalize:
        assert proxy.estimate(1e3 * F, y) == pytest.approx(R - Rc, rel=1e-9)


# ------------------------------------------------------------------ GBC
def naive_gbc(F, y):
    classes = np.unique(y)
    stats = [(F[y == c].mean(0), np.diag(F[y == c].var(0))) for c in classes]
    total = 0.0
    for i, (m1, s1) in enumerate(stats):
        for j, (m2, s2) in enumerate(stats):
            if i == j:
                continue
            s = (s1 + s2) / 2
            diff = m1 - m2
            db = diff @ np.linalg.inv(s) @ diff / 8 + 0.5 * np.log(
                np.linalg.det(s) / np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
            total += np.exp(-db)
    return -total


def test_gbc_matches_pairwise_bhattacharyya():
    F, y = blobs(40, 5, k=4, sep=1.0, seed=6)
    assert GBC(pca_dim=None).estimate(F, y) == pytest.approx(naive_gbc(F, y), rel=1e-9)
    # PCA to 3 components: top eigenvectors of the covariance (signs do not matter)
    Xc = F - F.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(Xc.T, bias=True))
    P = Xc @ evecs[:, np.argsort(evals)[::-1][:3]]
    assert GBC(pca_dim=3).estimate(F, y) == pytest.approx(naive_gbc(P, y), rel=1e-9)
    # pca_dim >= D keeps the features as they are
    assert GBC().estimate(F, y) == pytest.approx(naive_gbc(F, y), rel=1e-9)
    # constant features: every coefficient is 1 -> -K(K-1)
    assert GBC().estimate(np.ones((40, 5)), y) == -12.0


# ------------------------------------------------------------------ common behaviour
@pytest.mark.parametrize('name', NAMES)
def test_registry_build_and_eval_default(name):
    proxy = PROXIES.build(dict(type=name, num_batches=3, batch_size=16, seed=2))
    assert type(proxy).__name__ == name and proxy.needs_labels
    assert (proxy.num_batches, proxy.batch_size, proxy.seed) == (3, 16, 2)
    assert proxy.mode == 'eval'
    assert PROXIES.build(dict(type=name, mode='train')).mode == 'train'


@pytest.mark.parametrize('name', NAMES)
def test_separating_features_beat_random_features(name):
    proxy = PROXIES.build(dict(type=name))
    good, y = blobs(60, 8, sep=4.0, seed=7)
    rand = np.random.default_rng(8).normal(size=good.shape) * good.std(0)
    s_good, s_rand = proxy.estimate(good, y), proxy.estimate(rand, y)
    assert math.isfinite(s_good) and math.isfinite(s_rand)
    assert s_good > s_rand


@pytest.mark.parametrize('name', NAMES)
def test_degenerate_input_raises(name):
    proxy = PROXIES.build(dict(type=name))
    F, y = blobs(12, 4)
    with pytest.raises(ValueError, match=f'proxy {name} needs samples of at least 2 classes'):
        proxy.estimate(F, np.zeros(12, dtype=int))
    with pytest.raises(ValueError, match='at least 2 classes'):
        proxy.estimate(F[:1], y[:1])
    bad = F.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=f'proxy {name} produced nan'):
        proxy.estimate(bad, y)
    with pytest.raises(ValueError, match='feature rows but'):
        proxy.estimate(F, y[:-1])
    with pytest.raises(ValueError, match='needs class labels'):
        proxy.score(TinyNet(), (torch.randn(8, 3, 8, 8), None))


def test_class_specific_minimums():
    F, y = blobs(12, 4)
    y1 = y.copy()
    y1[0] = 7  # a class with a single sample
    with pytest.raises(ValueError, match='GBC needs at least 2 samples of every class.*'
                                         'class 7 has 1'):
        GBC().estimate(F, y1)
    for proxy in (LogME(), HScore(), TransRate()):  # no per-class variance needed
        assert math.isfinite(proxy.estimate(F, y1))
    with pytest.raises(ValueError, match='HScore needs more samples than classes'):
        HScore().estimate(F[:3], np.arange(3))


# ------------------------------------------------------------------ end to end
class TinyNet(nn.Module):
    """A plain module without ``extract_feat``: its [B, C, H, W] output is pooled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Dropout(0.5))
        self.grad_enabled = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.body(x)


def tiny_classifier():
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8,
                      num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(1,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=16)))


@pytest.fixture(scope='module')
def image_data():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    images = torch.randn(24, 3, 16, 16, generator=g) + labels.view(-1, 1, 1, 1).float()
    return [(img, lab) for img, lab in zip(images, labels)]  # a list of (image, label)


def snapshot(model):
    return ({k: (v.detach().clone(), v.requires_grad, v.grad) for k, v in
             model.named_parameters()},
            {k: v.clone() for k, v in model.named_buffers()},
            {k: m.training for k, m in model.named_modules()})


def assert_same(model, snap):
    params, buffers, training = snap
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), params[k][0]) and v.requires_grad == params[k][1], k
        assert v.grad is None and params[k][2] is None, k
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert {k: m.training for k, m in model.named_modules()} == training


@pytest.mark.parametrize('name', NAMES)
def test_image_classifier_scored_end_to_end(name, image_data):
    model = tiny_classifier()
    model.train()  # scored in eval mode, restored to train afterwards
    snap = snapshot(model)
    proxy = PROXIES.build(dict(type=name, **SMALL))
    s1 = proxy.score(model, image_data)
    assert_same(model, snap)
    assert isinstance(s1, float) and math.isfinite(s1)
    assert PROXIES.build(dict(type=name, **SMALL)).score(model, image_data) == s1
    # the score is the estimator on the neck features of the sampled batches
    batches = proxy.sample(image_data)
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.extract_feat(x)[-1] for x, _ in batches])
    model.train()
    labels = torch.cat([lab for _, lab in batches])
    assert proxy.estimate(feats, labels) == pytest.approx(s1, rel=1e-6)


def test_plain_module_pooled_output_no_grad(image_data):
    model = TinyNet()
    snap = snapshot(model)
    proxy = LogME(**SMALL)
    s = proxy.score(model, image_data)
    assert math.isfinite(s) and model.grad_enabled and not any(model.grad_enabled)
    assert_same(model, snap)
    batches = proxy.sample(image_data)
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model(x).mean((2, 3)) for x, _ in batches])
    model.train()
    assert proxy.estimate(feats, torch.cat([lab for _, lab in batches])) == pytest.approx(
        s, rel=1e-6)
    # too few samples for the estimator: one image is one class
    with pytest.raises(ValueError, match='at least 2 classes, got 1 class'):
        proxy.score(model, image_data[:1])
