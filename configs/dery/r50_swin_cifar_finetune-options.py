# Every fine-tuning option of a DeRy config, switched on, on r50_swin_cifar.py. The values are
# a template to adapt, not a tuned recipe (no results are claimed for this config).
#
#   bash tools/dist_train.sh configs/dery/r50_swin_cifar_finetune-options.py 8 --amp
#
# * FZ protocol: `frozen_blocks=True` freezes every zoo block (no gradients, norm layers in eval
#   mode); the stem (pretrained, from the first block's model), stitches, output norms and head
#   train. A list of block indices (e.g. [0, 1]) freezes only those; False is the FT protocol.
# * Learning-rate multipliers per part of the network (mmengine's paramwise_cfg.custom_keys, a
#   substring match on parameter names, the longest key first). ReassembledBackbone's modules:
#   `stem`, `stem_stitch` (stem='resnet' only), `blocks`, `stitches`, `out_norms`. A matched
#   key replaces the norm/bias decay rules for its parameters: give `decay_mult` there too.
# * AMP: `--amp` on the command line (or `optim_wrapper.type='AmpOptimWrapper'`; GPU only).
# * EMA: the EMAHook of the downstream schedule (custom_hooks), momentum 5e-4.
# * Gradient clipping: `optim_wrapper.clip_grad`.
_base_ = ['./r50_swin_cifar.py']

model = dict(backbone=dict(frozen_blocks=True))

optim_wrapper = dict(
    # type='AmpOptimWrapper', loss_scale='dynamic',
    clip_grad=dict(max_norm=5.0, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            # pretrained zoo weights: small steps (no effect on frozen blocks under FZ)
            'backbone.blocks': dict(lr_mult=0.1),
            'backbone.stem': dict(lr_mult=0.1),
            # new or refitted layers: larger steps
            'backbone.stem_stitch': dict(lr_mult=10.0),
            'backbone.stitches': dict(lr_mult=10.0),
            'backbone.out_norms': dict(lr_mult=10.0, decay_mult=0.0),
            'head': dict(lr_mult=10.0),
        }))

custom_hooks = [dict(type='EMAHook', momentum=5e-4, priority='ABOVE_NORMAL')]
