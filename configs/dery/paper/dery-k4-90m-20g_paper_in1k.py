# DeRy(4, 90, 20) of the paper (Table 2; 80.66M params, 13.29G FLOPs), rebuilt exactly: the original
# code's configs/dery/imagenet/90m_imagenet_128x8_100e_dery_adamw_freeze.py. A fixed assembly
# (`assembly.blocks`): tools/assemble.py builds and records it (zoo weights, no partition, no
# search, no probe data) and `dery.apis.get_model(this file, pretrained=False)` builds it at once.
#
# The original's network: a fresh 64-channel ResNet stem feeding SWSL ResNeXt-50 layer1 directly,
# every block at the resolution the chain delivers ('chain'), its stitches: BN -> conv (1x1, no
# bias) -> LeakyReLU(0.1) from the ResNeXt into Swin-S, LN -> Linear (no bias) -> LeakyReLU(0.1)
# between the Swins, randomly initialised. Swin-S's two blocks are consecutive cuts of one model
# and the original still puts a stitch between them (LN + Linear 96 -> 96): stitch_consecutive.
# The original's `stages.0.downsample` start is our `stages.1.blocks.0` (the patch merging is glue
# of the node after it). Training: the original's FZ protocol, AdamW lr 1e-3 at batch 8 x 128,
# 100 epochs, Mixup / CutMix, label smoothing, EMA of the weights (momentum 5e-4); --amp for its
# fp16; FT: --cfg-options model.backbone.frozen_blocks=False.
_base_ = ['../../_base_/recipes/dery-k4_8xb128-100e_in1k.py']

assembly = dict(
    blocks=[
        dict(model='resnext50_swsl', start='layer1.0', end='layer1.2'),
        dict(model='swin_small_in1k', start='stages.0.blocks.1', end='stages.0.blocks.1', stride=1),
        dict(model='swin_small_in1k', start='stages.1.blocks.0', end='stages.2.blocks.15', stride=1),
        dict(model='swin_base_in1k', start='stages.2.blocks.11', end='stages.3.blocks.1', stride=1),
    ],
    resolution='chain',
    stem=dict(type='resnet', channels=64),
    stitch=dict(type='NormActStitch'),
    stitch_consecutive=True,
    stitch_init='random')
constraints = dict(params=(None, 90_000_000), flops=(None, 20_000_000_000))
model = dict(backbone=dict(frozen_blocks=True), head=dict(in_channels=1024))
custom_hooks = [dict(type='EMAHook', momentum=5e-4, priority='ABOVE_NORMAL')]
