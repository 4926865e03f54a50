"""Stitch layers and ReassembledBackbone: all 9 family transitions, FZ, lstsq, complexity."""
import itertools

import pytest
import torch
from mmengine.registry import init_default_scope

from dery.models import ReassembledBackbone, StitchLayer, model_complexity
from dery.zoo import ZooCache
from dery.registry import MODELS
from dery.zoo.analysis import count_params

init_default_scope('dery')

TINY = {
    'cnn': dict(name='cnn', adapter='timm', model='resnet18', family='cnn',
                kwargs=dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128]), input_size=[3, 32, 32]),
    'vit': dict(name='vit', adapter='timm', model='vit_tiny_patch16_224', family='vit',
                kwargs=dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2),
                input_size=[3, 32, 32]),
    'swin': dict(name='swin', adapter='mmpretrain',
                 model=dict(type='SwinTransformer', arch=dict(embed_dims=24, depths=[1, 1, 1, 1],
                                                              num_heads=[1, 2, 2, 4]),
                            img_size=32, patch_size=2, window_size=4, pad_small_map=True),
                 family='swin', input_size=[3, 32, 32]),
}


@pytest.fixture(scope='module')
def cache():
    torch.manual_seed(0)
    c = ZooCache(list(TINY.values()), pretrained=False, input_size=(3, 32, 32))
    for name in TINY:
        c[name]  # build once
    return c


@pytest.mark.parametrize('src,dst', list(itertools.product(TINY, TINY)))
def test_all_nine_transitions_forward_backward(cache, src, dst):
    # first half of src, second half of dst: spatial sizes and widths differ
    blocks = [dict(model=src, start=0, end=1), dict(model=dst, start=2, end=3)]
    bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32), out_indices=(0, 1))
    x = torch.randn(2, 3, 32, 32)
    outs = bb(x)
    assert len(outs) == 2 and all(o.dim() == 4 for o in outs)
    expected_c = cache[dst].shapes(3)[1][-1] if dst != 'cnn' else cache[dst].shapes(3)[1][0]
    assert outs[-1].shape[1] == expected_c
    outs[-1].mean().backward()
    stitch = bb.stitches[0]
    if src == dst:
        assert isinstance(stitch, torch.nn.Identity)
    else:
        assert isinstance(stitch, StitchLayer) and stitch.proj.weight.grad is not None


def test_inside_image_classifier_any_last_family(cache):
    for last in TINY:
        blocks = [dict(model='cnn', start=0, end=1), dict(model=last, start=2, end=3)]
        bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32))
        channels = bb(torch.randn(1, 3, 32, 32))[-1].shape[1]
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='ReassembledBackbone', blocks=blocks,
                                                  zoo=cache, input_size=(3, 32, 32)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=channels)))
        logits = model(torch.randn(2, 3, 32, 32), mode='tensor')
        assert logits.shape == (2, 3)


def test_frozen_blocks(cache):
    blocks = [dict(model='vit', start=0, end=1), dict(model='swin', start=2, end=3)]
    bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32), frozen_blocks=True)
    bb.train()
    assert not any(p.requires_grad for blk in bb.blocks for p in blk.parameters())
    assert all(not m.training for blk in bb.blocks for m in blk.modules())
    assert all(p.requires_grad for p in bb.stitches.parameters())
    bb(torch.randn(2, 3, 32, 32))[-1].mean().backward()
    assert bb.stitches[0].proj.weight.grad is not None


def test_source_stem_needs_first_node(cache):
    with pytest.raises(ValueError, match="stem='resnet'"):
        ReassembledBackbone([dict(model='cnn', start=1, end=2)], zoo=cache, input_size=(3, 32, 32))
    bb = ReassembledBackbone([dict(model='cnn', start=1, end=2)], zoo=cache, input_size=(3, 32, 32),
                             stem='resnet')
    assert bb.eval()(torch.randn(1, 3, 32, 32))[-1].shape[1] == cache['cnn'].shapes(2)[1][0]


@pytest.mark.parametrize('src,dst', [('cnn', 'vit'), ('vit', 'swin'), ('swin', 'cnn'), ('vit', 'cnn')])
def test_lstsq_beats_random(cache, src, dst):
    torch.manual_seed(0)
    images = torch.randn(24, 3, 32, 32)
    blocks = [dict(model=src, start=0, end=1), dict(model=dst, start=2, end=3)]
    random_bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32), stitch_init='random')
    fitted_bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32))
    err_fit = fitted_bb.fit_stitches(cache.models, images)[0]
    zs, zd = cache[src], cache[dst]
    with torch.no_grad():
        x = zs.node_outputs(images)[zs.nodes[1]]
        y = zd.node_outputs(images)[zd.nodes[1]]
    err_random = random_bb.stitches[0].relative_error(x, y)
    assert err_fit < 0.9 * err_random, (err_fit, err_random)
    assert abs(fitted_bb.stitches[0].relative_error(x, y) - err_fit) < 1e-6


def test_complexity_counts_everything(cache):
    blocks = [dict(model='swin', start=0, end=1), dict(model='cnn', start=2, end=3)]
    bb = ReassembledBackbone(blocks, zoo=cache, input_size=(3, 32, 32))
    params, flops = model_complexity(bb, (3, 32, 32))
    assert params == count_params(bb)
    swin, cnn = cache['swin'], cache['cnn']
    parts = swin.stem_flops() + swin.flops(0, 1) + cnn.flops(2, 3)
    assert flops > parts  # plus the stitch
    assert model_complexity(bb, (3, 32, 32)) == (params, flops)
    # the stems still run normally afterwards
    assert torch.isfinite(bb(torch.randn(2, 3, 32, 32))[-1]).all()
