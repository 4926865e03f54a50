"""Training-free proxies: deterministic for a seed, the model left exactly as
found, meaningful on dead/NaN models, and every data format accepted."""
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dery.proxies import (NASWOT, SNIP, ProxyBatches, activation_modules, pool_features,
                          sample_batches)
from dery.registry import PROXIES

NAMES = ['NASWOT', 'SynFlow', 'SNIP', 'GradNorm', 'Jacov', 'Fisher']
SMALL = dict(num_batches=2, batch_size=8, seed=0, device='cpu')


def tiny_cnn(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def tiny_vit(num_classes=10):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32,
                             patch_size=8, depth=2, embed_dim=64, num_heads=2,
                             num_classes=num_classes)


class FunctionalMLP(nn.Module):
    """Activations only through F.gelu: nothing to hook but Linear layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3 * 16 * 16, 64)
        self.fc2 = nn.Linear(64, 32)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, 16).flatten(1)
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)


def snapshot(model):
    return dict(
        params={k: (v.detach().clone(), v.dtype, v.device, v.requires_grad,
                    None if v.grad is None else v.grad.clone())
                for k, v in model.named_parameters()},
        buffers={k: v.clone() for k, v in model.named_buffers()},
        training={k: m.training for k, m in model.named_modules()})


def assert_same(model, snap):
    for k, v in model.named_parameters():
        data, dtype, device, req, grad = snap['params'][k]
        assert v.dtype == dtype and v.device == device, k
        assert torch.equal(v.detach(), data), k
        assert v.requires_grad == req, k
        assert (v.grad is None) == (grad is None), k
        if grad is not None:
            assert torch.equal(v.grad, grad), k
    for k, v in model.named_buffers():
        assert torch.equal(v, snap['buffers'][k]), k
    assert {k: m.training for k, m in model.named_modules()} == snap['training']


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('arch', ['cnn', 'vit'])
def test_deterministic_and_state_restored(name, arch, data):
    model = tiny_cnn() if arch == 'cnn' else tiny_vit()
    # a mixed state: some frozen params, an existing grad, a submodule in eval
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.full_like(params[1], 0.5)
    list(model.children())[1].eval()
    snap = snapshot(model)
    rng_before = torch.get_rng_state()
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()

    proxy = PROXIES.build(dict(type=name, **SMALL))
    s1 = proxy.score(model, data)
    assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    s2 = PROXIES.build(dict(type=name, **SMALL)).score(model, data)
    assert isinstance(s1, float) and np.isfinite(s1)
    assert s1 == s2
    assert_same(model, snap)


def test_seed_changes_subset(data):
    model = tiny_cnn()
    a = NASWOT(**SMALL).score(model, data)
    b = NASWOT(**{**SMALL, 'seed': 1}).score(model, data)
    assert a != b


def test_naswot_ranks_dead_network_lowest(data):
    alive = tiny_cnn()
    dead = tiny_cnn()
    with torch.no_grad():
        for m in dead.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.zero_()
                m.bias.zero_()
    proxy = NASWOT(**SMALL)
    s_alive, s_dead = proxy.score(alive, data), proxy.score(dead, data)
    assert np.isfinite(s_dead) and s_dead < s_alive - 50
    # Jacov also puts it lowest rather than failing
    jac = PROXIES.build(dict(type='Jacov', **SMALL))
    assert jac.score(dead, data) < jac.score(alive, data)


@pytest.mark.parametrize('name', ['NASWOT', 'SNIP', 'Jacov'])
def test_nan_model_clear_error(name, data):
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=f'proxy {name} produced nan on this model.*'
                                         'input normalisation'):
        PROXIES.build(dict(type=name, **SMALL)).score(model, data)


def test_functional_activations_fall_back_to_linear_signs(data):
    model = FunctionalMLP()
    assert activation_modules(model) == []
    s = NASWOT(**SMALL).score(model, data)
    dead = FunctionalMLP()
    with torch.no_grad():
        dead.fc1.weight.zero_()
        dead.fc1.bias.zero_()
    assert np.isfinite(s) and NASWOT(**SMALL).score(dead, data) < s


def test_vit_gelu_modules_are_hooked():
    assert len(activation_modules(tiny_vit())) == 2  # one nn.GELU per block MLP


def test_backbone_features_get_temporary_head(data):
    cnn_backbone = nn.Sequential(*list(tiny_cnn())[:6])  # -> [B, 16, 16, 16] NCHW
    vit_backbone = tiny_vit(num_classes=0)                # -> pooled [B, 64]
    for backbone in (cnn_backbone, vit_backbone):
        snap = snapshot(backbone)
        n_linear = sum(isinstance(m, nn.Linear) for m in backbone.modules())
        for name in ('SNIP', 'GradNorm', 'Fisher'):
            proxy = PROXIES.build(dict(type=name, num_batches=1, batch_size=8, device='cpu'))
            s = proxy.score(backbone, data)
            assert np.isfinite(s) and s == proxy.score(backbone, data)
        assert_same(backbone, snap)
        assert sum(isinstance(m, nn.Linear) for m in backbone.modules()) == n_linear


def test_pool_features_layouts():
    assert pool_features(torch.ones(2, 7)).shape == (2, 7)
    assert pool_features(torch.ones(2, 64, 7, 7)).shape == (2, 64)      # NCHW
    assert pool_features(torch.ones(2, 7, 7, 768), 'swin').shape == (2, 768)    # Swin NHWC, declared
    assert pool_features(torch.ones(2, 50, 192)).shape == (2, 192)      # tokens
    x = torch.arange(2 * 4 * 3 * 3, dtype=torch.float).view(2, 4, 3, 3)
    assert torch.equal(pool_features(x, 'nhwc'), x.mean((1, 2)))


def test_label_proxies_need_labels(data):
    with pytest.raises(ValueError, match='needs class labels'):
        SNIP(**SMALL).score(tiny_cnn(), (data[0], None))
    assert np.isfinite(NASWOT(**SMALL).score(tiny_cnn(), (data[0], None)))


# ---------------------------------------------------------------------------- data
def test_sample_batches_seeded_and_rng_clean(data):
    state = torch.get_rng_state()
    a = sample_batches(data, 3, 8, seed=0)
    b = sample_batches(data, 3, 8, seed=0)
    c = sample_batches(data, 3, 8, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(a, ProxyBatches) and len(a) == 3
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # a shuffled subset, not the first samples
    assert not torch.equal(a[0][0], data[0][:8])
    assert sample_batches(a, 1, 1) is a


def test_sample_batches_formats(data):
    imgs, labels = data
    ref = sample_batches((imgs, labels), 2, 4, seed=5)
    ds = TensorDataset(imgs, labels)
    for source in (ds, DataLoader(ds, batch_size=7, shuffle=True), list(zip(imgs, labels))):
        got = sample_batches(source, 2, 4, seed=5)
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                   for x, y in zip(got, ref))
    # a plain iterable of batches: drawn from the samples it yields
    gen = ((imgs[i:i + 10], labels[i:i + 10]) for i in range(0, 48, 10))
    got = sample_batches(gen, 2, 4, seed=5)
    assert [tuple(x.shape) for x, _ in got] == [(4, 3, 32, 32)] * 2
    # fewer samples than asked: all of them
    small = sample_batches((imgs[:5], labels[:5]), 2, 4)
    assert [len(y) for _, y in small] == [4, 1]


def test_sample_batches_mmengine_dicts():
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(0)
    raw = [dict(inputs=torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g),
                data_samples=DataSample().set_gt_label(i % 5)) for i in range(20)]
    pre = dict(type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53],
               std=[58.395, 57.12, 57.375], to_rgb=True)
    batches = sample_batches(raw, 2, 4, seed=0, preprocess=pre)
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    assert y.dtype == torch.long and set(y.tolist()) <= set(range(5))
    # a collated mmengine loader yields dicts of lists: same samples, same result
    loader = [dict(inputs=[r['inputs'] for r in raw[i:i + 6]],
                   data_samples=[r['data_samples'] for r in raw[i:i + 6]])
              for i in range(0, 20, 6)]
    again = sample_batches(loader, 2, 4, seed=0, preprocess=pre)
    assert torch.equal(again[0][0], x) and torch.equal(again[0][1], y)
    # default normalisation without preprocess: ImageNet mean/std, no swap
    plain = sample_batches(raw, 1, 4, seed=0)
    assert plain[0][0].abs().max() < 3
    score = NASWOT(num_batches=2, batch_size=4, device='cpu', preprocess=pre).score(
        tiny_cnn(), raw)
    assert np.isfinite(score)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="mode must be 'train' or 'eval'"):
        NASWOT(mode='test')
    with pytest.raises(KeyError, match='registered names'):
        PROXIES.build(dict(type='NASWOTT'))


def test_naswot_kernel_counts_agreeing_units_over_several_slices():
    """The kernel is made slice by slice of 64k units: it equals an independent count of the units on
    which two samples' activation signs agree (73,728 units in the first ReLU: two slices)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1), nn.ReLU())
    imgs = torch.randn(5, 3, 96, 96)
    proxy = NASWOT(**SMALL)
    K, units = proxy._kernel(model, imgs, activation_modules(model))
    with torch.no_grad():
        a1 = model[1](model[0](imgs))
        a2 = model[3](model[2](a1))
    bits = np.concatenate([(a > 0).flatten(1).numpy() for a in (a1, a2)], axis=1)
    assert units == bits.shape[1] == 8 * 96 * 96 + 2 * 96 * 96
    dense = (bits[:, None, :] == bits[None, :, :]).sum(-1)
    assert np.array_equal(K.numpy(), dense.astype(np.float64))
