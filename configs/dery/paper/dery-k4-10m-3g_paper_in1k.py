# DeRy(4, 10, 3) of the paper (Table 2; 7.83M params, 2.99G FLOPs), rebuilt exactly: the original
# code's configs/dery/imagenet/10m_imagenet_128x8_100e_dery_adamw_freeze.py. A fixed assembly
# (`assembly.blocks`): tools/assemble.py builds and records it (zoo weights, no partition, no
# search, no probe data) and `dery.apis.get_model(this file, pretrained=False)` builds it at once.
#
# The original's network: a fresh ResNet stem with 32 channels (7x7/2 conv, BN, ReLU, 3x3/2
# max-pool) feeding RegNetY-16GF block1 directly (32 channels), every block at the resolution the
# chain delivers ('chain': RegNetY-16GF block1 runs 56 -> 28, the output is 14x14), and its
# stitches (`NeuralAdapter`: BN -> conv, kernel = stride, no bias -> LeakyReLU(0.1)), stride 1,
# randomly initialised. Training: the original's FZ protocol (zoo blocks frozen; stem, stitches and
# head trained), AdamW lr 1e-3 at batch 8 x 128, 100 epochs, Mixup 0.1 / CutMix 1.0, label
# smoothing 0.1 (run with --amp for the original's fp16). FT (the original's
# 10m_imagenet_128x8_100e_dery_adamw.py): --cfg-options model.backbone.frozen_blocks=False.
_base_ = ['../../_base_/recipes/dery-k4_8xb128-100e_in1k.py']

assembly = dict(
    blocks=[
        dict(model='regnety_16gf', start='trunk_output.block1.block1-0', end='trunk_output.block1.block1-1'),
        dict(model='mobilenetv3_large', start='blocks.2.2', end='blocks.2.2', stride=1),
        dict(model='regnety_800mf', start='trunk_output.block3.block3-3', end='trunk_output.block3.block3-7',
             stride=1),
        dict(model='regnety_1.6gf', start='trunk_output.block3.block3-15', end='trunk_output.block4.block4-1',
             stride=1),
    ],
    resolution='chain',
    stem=dict(type='resnet', channels=32),
    stitch=dict(type='NormActStitch'),
    stitch_init='random')
constraints = dict(params=(None, 10_000_000), flops=(None, 3_000_000_000))
model = dict(backbone=dict(frozen_blocks=True), head=dict(in_channels=888))
