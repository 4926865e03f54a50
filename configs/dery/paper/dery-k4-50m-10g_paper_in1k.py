# DeRy(4, 50, 10) of the paper (Table 2; 40.41M params, 6.43G FLOPs), rebuilt exactly: the original
# code's configs/dery/imagenet/50m_imagenet_128x8_100e_dery_adamw_freeze.py. A fixed assembly
# (`assembly.blocks`): tools/assemble.py builds and records it (zoo weights, no partition, no
# search, no probe data) and `dery.apis.get_model(this file, pretrained=False)` builds it at once.
#
# The original's network: a fresh 64-channel ResNet stem feeding ResNet-50 layer1 directly, every
# block at the resolution the chain delivers ('chain'), its stitches (BN -> conv, kernel = stride,
# no bias -> LeakyReLU(0.1)): stride 2 into RegNetY-3.2GF block2 (56 -> 28), else 1; randomly
# initialised. Training: the original's FZ protocol, AdamW lr 1e-3 at batch 8 x 128, 100 epochs,
# Mixup / CutMix, label smoothing (--amp for its fp16); FT:
# --cfg-options model.backbone.frozen_blocks=False.
_base_ = ['../../_base_/recipes/dery-k4_8xb128-100e_in1k.py']

assembly = dict(
    blocks=[
        dict(model='resnet50_in1k', start='layer1.0', end='layer1.1'),
        dict(model='regnety_3.2gf', start='trunk_output.block2.block2-1', end='trunk_output.block3.block3-1',
             stride=2),
        dict(model='resnet101_in1k', start='layer3.8', end='layer3.22', stride=1),
        dict(model='resnet50_in1k', start='layer3.4', end='layer4.2', stride=1),
    ],
    resolution='chain',
    stem=dict(type='resnet', channels=64),
    stitch=dict(type='NormActStitch'),
    stitch_init='random')
constraints = dict(params=(None, 50_000_000), flops=(None, 10_000_000_000))
model = dict(backbone=dict(frozen_blocks=True), head=dict(in_channels=2048))
