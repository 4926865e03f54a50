"""Zoo: node enumeration, exact cuts, adapters, model_zoo.yml validation."""
import random
import time

import pytest
import torch

from dery.zoo import (ZooError, WeightsUnavailableError, build_zoo_model, load_zoo,
                      resolve_entry)

# One entry per family x adapter the issue names, random-init and small inputs.
EXACT_CASES = {
    'timm_resnet50': dict(adapter='timm', model='resnet50', family='cnn', input_size=[3, 64, 64]),
    'timm_vit_small': dict(adapter='timm', model='vit_small_patch16_224', family='vit',
                           kwargs=dict(img_size=64), input_size=[3, 64, 64]),
    'timm_swin_tiny': dict(adapter='timm', model='swin_tiny_patch4_window7_224', family='swin',
                           kwargs=dict(img_size=64, window_size=4), input_size=[3, 64, 64]),
    'timm_mobilenetv3_large': dict(adapter='timm', model='mobilenetv3_large_100', family='cnn',
                                   input_size=[3, 64, 64]),
    'mmpretrain_resnet50': dict(adapter='mmpretrain', model=dict(type='ResNet', depth=50),
                                family='cnn', input_size=[3, 64, 64]),
    'mmpretrain_vit': dict(adapter='mmpretrain',
                           model=dict(type='VisionTransformer', arch='deit-small', img_size=64),
                           family='vit', input_size=[3, 64, 64]),
    'mmpretrain_swin': dict(adapter='mmpretrain',
                            model=dict(type='SwinTransformer', arch='tiny', img_size=64,
                                       window_size=4, pad_small_map=True),
                            family='swin', input_size=[3, 64, 64]),
    'torchvision_resnet50': dict(adapter='torchvision', model='resnet50', family='cnn',
                                 input_size=[3, 64, 64]),
    'torchvision_regnet_y_800mf': dict(adapter='torchvision', model='regnet_y_800mf', family='cnn',
                                       input_size=[3, 64, 64]),
    # beyond the list: other families and libraries the rules cover
    'timm_convnext_tiny': dict(adapter='timm', model='convnext_tiny', family='cnn',
                               input_size=[3, 64, 64]),
    'torchvision_swin_t': dict(adapter='torchvision', model='swin_t', family='swin',
                               input_size=[3, 64, 64]),
    'torchvision_vit_b_16': dict(adapter='torchvision', model='vit_b_16', family='vit',
                                 kwargs=dict(image_size=64), input_size=[3, 64, 64]),
    'mmpretrain_convnext': dict(adapter='mmpretrain', model=dict(type='ConvNeXt', arch='tiny'),
                                family='cnn', input_size=[3, 64, 64]),
}
EXPECTED_NODES = {
    'timm_resnet50': 16, 'timm_vit_small': 12, 'timm_swin_tiny': 12, 'timm_mobilenetv3_large': 16,
    'mmpretrain_resnet50': 16, 'mmpretrain_vit': 12, 'mmpretrain_swin': 12,
    'torchvision_resnet50': 16, 'torchvision_regnet_y_800mf': 14, 'timm_convnext_tiny': 18,
    'torchvision_swin_t': 12, 'torchvision_vit_b_16': 12, 'mmpretrain_convnext': 18,
}


def random_tilings(n, count, seed=0):
    """``count`` random ways to cut ``range(n)`` into contiguous pieces (plus all singletons)."""
    rng = random.Random(seed)
    tilings = [[(i, i) for i in range(n)]]
    for _ in range(count):
        k = rng.randint(1, min(5, n - 1))
        cuts = sorted(rng.sample(range(1, n), k))
        bounds = [0] + cuts + [n]
        tilings.append([(a, b - 1) for a, b in zip(bounds[:-1], bounds[1:])])
    return tilings


@pytest.mark.parametrize('case', sorted(EXACT_CASES))
def test_cuts_compose_exactly(case):
    t0 = time.perf_counter()
    torch.manual_seed(0)
    zm = build_zoo_model(dict(name=case, **EXACT_CASES[case]), pretrained=False)
    assert len(zm.nodes) == EXPECTED_NODES[case]
    assert zm.family == EXACT_CASES[case]['family']
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = zm.node_outputs(x)
        assert list(outs) == zm.nodes
        ref = outs[zm.nodes[-1]]
        stem_out = zm.stem()(x)
        assert torch.equal(stem_out, zm.stem()(x))
        for tiling in random_tilings(len(zm.nodes), 3):
            y = stem_out
            for start, end in tiling:
                y = zm.cut(start, end)(y)
                # every intermediate matches the captured node output too
                assert (y - outs[zm.nodes[end]]).abs().max().item() < 1e-5
            assert (y - ref).abs().max().item() < 1e-5
    elapsed = time.perf_counter() - t0
    print(f'\n[exactness] {case}: {len(zm.nodes)} nodes, {elapsed:.2f}s')


def test_cut_shares_weights_unless_copied():
    zm = build_zoo_model(dict(name='r', **EXACT_CASES['timm_resnet50']), pretrained=False)
    shared = zm.cut(2, 5)
    copied = zm.cut(2, 5, copy=True)
    model_ptrs = {p.data_ptr() for p in zm.model.parameters()}
    assert all(p.data_ptr() in model_ptrs for p in shared.parameters())
    assert not any(p.data_ptr() in model_ptrs for p in copied.parameters())
    x = torch.randn(1, *zm.shapes(2)[0])
    with torch.no_grad():
        assert torch.equal(shared(x), copied(x))


def test_sizes_add_up():
    zm = build_zoo_model(dict(name='v', **EXACT_CASES['timm_vit_small']), pretrained=False)
    table = zm.node_table()
    assert [r['name'] for r in table] == zm.nodes
    assert sum(r['params'] for r in table) == zm.params()
    assert sum(r['flops'] for r in table) == zm.flops()
    total = sum(p.numel() for p in zm.model.parameters())
    head = sum(p.numel() for n, p in zm.model.named_parameters() if n.startswith(('head', 'norm', 'fc_norm')))
    assert zm.stem_params() + zm.params() + head == total
    # attention FLOPs are counted (scaled_dot_product_attention handle)
    n_tok, dim = zm.shapes(0)[0]
    assert table[0]['flops'] > 12 * n_tok * dim * dim
    assert zm.stem_flops() > 0


def test_swin_glue_attached_to_next_node():
    zm = build_zoo_model(dict(name='s', **EXACT_CASES['timm_swin_tiny']), pretrained=False)
    units = zm.units('layers.1.blocks.0')
    assert units == ['layers.1.downsample', 'layers.1.blocks.0']
    (h_in, w_in, c_in), (h_out, w_out, c_out) = zm.shapes('layers.1.blocks.0')
    assert (h_out, w_out, c_out) == (h_in // 2, w_in // 2, c_in * 2)


def test_vit_prefix_tokens():
    zm = build_zoo_model(dict(name='v', **EXACT_CASES['timm_vit_small']), pretrained=False)
    assert zm.num_prefix_tokens == 1
    assert zm.shapes(0)[0] == (1 + 16, 384)


def test_nodes_override_and_bad_override():
    entry = dict(name='r', **EXACT_CASES['timm_resnet50'])
    nodes = ['layer1', 'layer2', 'layer3', 'layer4']
    zm = build_zoo_model(dict(entry, nodes=nodes), pretrained=False)
    assert zm.nodes == nodes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(zm.cut(0, 3)(zm.stem()(x)), zm.node_outputs(x)['layer4'])
    with pytest.raises(ValueError, match='do not exist.*layer9'):
        build_zoo_model(dict(entry, nodes=['layer1', 'layer9']), pretrained=False)


def _save(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.parametrize('library,model,kwargs', [
    ('timm', 'resnet18', {}),
    ('torchvision', 'resnet18', {}),
    ('mmpretrain', dict(type='ResNet', depth=18), {}),
])
def test_local_checkpoint_round_trip(tmp_path, library, model, kwargs):
    torch.manual_seed(1)
    src = build_zoo_model(dict(name='src', adapter=library, model=model, family='cnn',
                               input_size=[3, 32, 32]), pretrained=False)
    ckpt = _save(src.model, tmp_path / 'weights.pth')
    torch.manual_seed(2)
    local = build_zoo_model(dict(name='loaded', adapter='local', family='cnn', weights=ckpt,
                                 arch=dict(library=library, model=model, kwargs=kwargs),
                                 input_size=[3, 32, 32]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = src.node_outputs(x), local.node_outputs(x)
    assert all(torch.equal(a[n], b[n]) for n in src.nodes)
    # the library adapters take a local path in `weights` as well
    same = build_zoo_model(dict(name='same', adapter=library, model=model, family='cnn',
                                weights=ckpt, input_size=[3, 32, 32]))
    with torch.no_grad():
        assert torch.equal(same.node_outputs(x)[src.nodes[-1]], a[src.nodes[-1]])


def test_missing_and_corrupt_weights(tmp_path):
    entry = dict(name='r18', adapter='timm', model='resnet18', family='cnn')
    missing = tmp_path / 'nope.pth'
    with pytest.raises(WeightsUnavailableError, match=r'not found: .*nope\.pth.*put the checkpoint there'):
        build_zoo_model(dict(entry, weights=str(missing)))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint at all')
    with pytest.raises(WeightsUnavailableError, match='truncated or corrupt'):
        build_zoo_model(dict(entry, weights=str(bad)))
    other = tmp_path / 'other.pth'
    _save(build_zoo_model(dict(name='x', adapter='timm', model='resnet34', family='cnn'),
                          pretrained=False).model, other)
    with pytest.raises(WeightsUnavailableError, match='does not fit zoo model'):
        build_zoo_model(dict(entry, weights=str(other)))


def test_pickle_checkpoint_needs_opt_in(tmp_path):
    import collections
    src = build_zoo_model(dict(name='s', adapter='timm', model='resnet18', family='cnn'),
                          pretrained=False)
    path = tmp_path / 'pickled.pth'
    torch.save(dict(state_dict=src.model.state_dict(), extra=collections.Counter(a=1),
                    fn=random.Random), path)
    entry = dict(name='p', adapter='timm', model='resnet18', family='cnn', weights=str(path))
    with pytest.raises(WeightsUnavailableError, match='allow_pickle: true'):
        build_zoo_model(entry)
    build_zoo_model(dict(entry, allow_pickle=True))


def test_offline_hub_weights_name_the_cache_file():
    entry = resolve_entry('resnet50_in1k')
    with pytest.raises(WeightsUnavailableError) as info:
        build_zoo_model(dict(entry.to_dict(), weights='https://example.invalid/ckpt/r50_dery_test.pth'))
    assert 'r50_dery_test.pth' in str(info.value) and 'put the file at' in str(info.value)


def test_model_zoo_yml_mirrors_the_paper():
    zoo = load_zoo()
    assert len(zoo) >= 24
    families = {e.family for e in zoo.values()}
    assert families == {'cnn', 'vit', 'swin'}
    assert {e.adapter for e in zoo.values()} >= {'timm', 'mmpretrain', 'torchvision'}
    methods = {str(e.pretrain.get('method')) for e in zoo.values()}
    assert {'MoCo v2', 'BYOL', 'SimCLR', 'MoCo v3', 'MAE'} <= methods


@pytest.mark.parametrize('name', ['resnet18_in1k', 'vit_small_mocov3', 'swin_tiny_in1k',
                                  'regnety_800mf', 'mobilenetv3_large', 'resnext50_swsl'])
def test_zoo_entries_build_random_init(name):
    zm = build_zoo_model(name, pretrained=False)
    assert len(zm.nodes) >= 8
    assert zm.entry.name == name


@pytest.mark.parametrize('text,match', [
    ('- {name: a, model: resnet18, family: cnn}', r"entry #1 'a'.*`adapter` is missing"),
    ('- {name: a, adapter: caffe, model: r, family: cnn}', r"'a'.*`adapter` is 'caffe'"),
    ('- {name: a, adapter: timm, model: r, family: rnn}', r"'a'.*`family` is 'rnn'"),
    ('- {name: a, adapter: timm, family: cnn}', r"'a'.*`model` is missing"),
    ('- {adapter: timm, model: r, family: cnn}', r'entry #1.*`name` is missing'),
    ('- {name: a, adapter: timm, model: r, family: cnn, top1: high}', r"'a'.*`top1`"),
    ('- {name: a, adapter: timm, model: r, family: cnn, colour: red}', r"'a'.*unknown field.*colour"),
    ('- {name: a, adapter: local, family: cnn, weights: w.pth}', r"'a'.*needs field `arch`"),
    ('- {name: a, adapter: timm, model: r, family: cnn}\n- {name: a, adapter: timm, model: s, family: cnn}',
     r"duplicate name 'a'"),
    ('- {name: a, adapter: timm\n  model: [', r'not valid YAML at line'),
    ('just: a mapping', r'expected a list'),
])
def test_malformed_zoo_file(tmp_path, text, match):
    path = tmp_path / 'model_zoo.yml'
    path.write_text(text)
    with pytest.raises(ZooError, match=match):
        load_zoo(str(path))


def test_unknown_zoo_name_suggests():
    with pytest.raises(ZooError, match="'resnet50_in1kk' is not in the model zoo.*resnet50_in1k"):
        resolve_entry('resnet50_in1kk')
