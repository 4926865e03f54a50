# What the demo's two training configs (configs/demo/source_pretrain.py, dery_digits.py) share:
# 16x16 RGB images normalised around 127.5 (no channel swap), loaders in the main process
# (num_workers=0; infinite training sampler, test batches of 200), top-1 accuracy, AdamW with
# weight decay 0.05, iteration-based logs and a single checkpoint at the end, gloo (CPU).
# Each config adds its data, model, learning rate and schedule (tools/demo.py resets the
# iterations and the warm-up + cosine schedule of every run).
_base_ = ['./default_runtime.py']

data_preprocessor = dict(
    type='ClsDataPreprocessor', mean=[127.5, 127.5, 127.5], std=[64.0, 64.0, 64.0], to_rgb=False)

train_dataloader = dict(num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(batch_size=200, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', weight_decay=0.05))
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(logger=dict(log_metric_by_epoch=False),
                     checkpoint=dict(type='CheckpointHook', interval=-1, by_epoch=False, save_last=True))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
