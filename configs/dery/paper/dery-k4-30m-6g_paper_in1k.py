# DeRy(4, 30, 6) of the paper (Table 2; 24.89M params, 4.47G FLOPs), rebuilt exactly: the original
# code's configs/dery/imagenet/30m_imagenet_128x8_100e_dery_adamw_freeze.py. A fixed assembly
# (`assembly.blocks`): tools/assemble.py builds and records it (zoo weights, no partition, no
# search, no probe data) and `dery.apis.get_model(this file, pretrained=False)` builds it at once.
#
# The original's network: a fresh 64-channel ResNet stem feeding SWSL ResNeXt-50 layer1 directly,
# every block at the resolution the chain delivers ('chain': ResNet-50 layer2.2 runs at 14x14),
# its stitches (BN -> conv, kernel = stride, no bias -> LeakyReLU(0.1)), stride 1, randomly
# initialised. ResNet-50 layer2.2 appears in two blocks: each has its own copy (the original builds
# every block from a fresh model). Training: the original's FZ protocol, AdamW lr 1e-3 at batch
# 8 x 128, 100 epochs, Mixup / CutMix, label smoothing (--amp for its fp16); FT:
# --cfg-options model.backbone.frozen_blocks=False.
_base_ = ['../../_base_/recipes/dery-k4_8xb128-100e_in1k.py']

assembly = dict(
    blocks=[
        dict(model='resnext50_swsl', start='layer1.0', end='layer1.2'),
        dict(model='resnet50_in1k', start='layer1.2', end='layer3.1', stride=1),
        dict(model='resnet50_in1k', start='layer2.2', end='layer2.2', stride=1),
        dict(model='swin_small_in1k', start='stages.2.blocks.16', end='stages.3.blocks.1', stride=1),
    ],
    resolution='chain',
    stem=dict(type='resnet', channels=64),
    stitch=dict(type='NormActStitch'),
    stitch_init='random')
constraints = dict(params=(None, 30_000_000), flops=(None, 6_000_000_000))
model = dict(backbone=dict(frozen_blocks=True), head=dict(in_channels=768))
