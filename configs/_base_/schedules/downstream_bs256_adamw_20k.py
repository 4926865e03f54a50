# The paper's downstream fine-tuning recipe (DeRy, Sec. 5 and the original code's
# downstream_bs256_adamw): AdamW, lr 2.5e-4 at a total batch of 256 (5e-4 x 256 / 512), weight
# decay 0.05 (none on norms, biases and class tokens), linear warm-up then cosine decay,
# 20k iterations, EMA of the weights. RandAugment is in the data pipelines
# (datasets/*_224.py); Mixup/CutMix and label smoothing in the model (models/dery.py).
# No gradient clipping, as in the paper; add `optim_wrapper.clip_grad=dict(max_norm=...)`.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-4 * 256 / 512, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'.cls_token': dict(decay_mult=0.0)}),
)

warmup_iters = 500
max_iters = 20000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=False, begin=warmup_iters, end=max_iters,
         T_max=max_iters - warmup_iters),
]

train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=2000)
val_cfg = dict()
test_cfg = dict()

# EMA of the weights, evaluated in place of the raw weights (mmengine's EMAHook; the original
# code's momentum: ema = (1 - m) * ema + m * weights every iteration).
custom_hooks = [dict(type='EMAHook', momentum=5e-4, priority='ABOVE_NORMAL')]

log_processor = dict(by_epoch=False)

# `tools/train.py --auto-scale-lr` scales the lr by (GPUs x batch per GPU) / 256.
auto_scale_lr = dict(base_batch_size=256)
