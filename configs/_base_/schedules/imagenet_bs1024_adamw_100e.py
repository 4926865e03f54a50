# ImageNet-1k training of a reassembled network (DeRy, Sec. 5; the original code's ImageNet
# configs): AdamW, lr 1e-3 at a total batch of 1024 (5e-4 x 1024 / 512), weight decay 0.05 (none
# on norms, biases and class tokens), 5 warm-up epochs then cosine decay, 100 epochs. The same
# schedule serves the FZ (blocks frozen) and FT (all trained) protocols.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'.cls_token': dict(decay_mult=0.0)}),
)

warmup_epochs = 5
max_epochs = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs),
]

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=5)
val_cfg = dict()
test_cfg = dict()

# `tools/train.py --auto-scale-lr` scales the lr by (GPUs x batch per GPU) / 1024.
auto_scale_lr = dict(base_batch_size=1024)
