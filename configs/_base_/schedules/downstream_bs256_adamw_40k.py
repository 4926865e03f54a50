# downstream_bs256_adamw_20k.py for 40k iterations (the original code's choice for the larger
# budgets; the paper fine-tunes for 20k-40k iterations).
_base_ = ['./downstream_bs256_adamw_20k.py']

warmup_iters = 500
max_iters = 40000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=False, begin=warmup_iters, end=max_iters,
         T_max=max_iters - warmup_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=4000)
