# The tiny CPU config used by tests and smoke runs: a random-init zoo of a CNN, a ViT and a Swin,
# generated data (no download), K=3, a budget below the largest zoo model.
_base_ = ['../_base_/zoo/tiny_cpu.py', '../_base_/default_runtime.py']

num_classes = 4
data_preprocessor = dict(
    type='ClsDataPreprocessor', num_classes=num_classes, mean=[127.5, 127.5, 127.5], std=[64.0, 64.0, 64.0], to_rgb=False)

# ---------------------------------------------------------------- stage 1: similarity
probe = dict(
    dataset=dict(type='SyntheticImageDataset', num_samples=64, num_classes=num_classes, image_size=32,
                 seed=0, split='train', pipeline=[dict(type='PackInputs')]),
    num_samples=32, batch_size=16, seed=0, data_preprocessor=data_preprocessor)
similarity = dict(type='LinearCKA', pooling='avg')

# ---------------------------------------------------------------- stage 2: partition
partitioner = dict(type='CoverSetPartitioner', num_sets=3, eps=0.2, restarts=20, seed=0)

# ---------------------------------------------------------------- stage 3: assembly
target = dict(
    dataset=dict(type='SyntheticImageDataset', num_samples=64, num_classes=num_classes, image_size=32,
                 seed=1, split='train', pipeline=[dict(type='PackInputs')]),
    data_preprocessor=data_preprocessor)
proxy = dict(type='NASWOT', num_batches=2, batch_size=16, seed=0)
solver = dict(type='ILPSolver', top_m=4)
constraints = dict(params=(None, 1_500_000), flops=(None, 40_000_000))
assembly = dict(stem='source', stitch_init='lstsq', stitch_samples=32)

# ---------------------------------------------------------------- stage 4: training
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ReassembledBackbone', assembly='auto', frozen_blocks=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=num_classes, in_channels='auto',
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

train_pipeline = [dict(type='RandomFlip', prob=0.5, direction='horizontal'), dict(type='PackInputs')]
test_pipeline = [dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=16, num_workers=0,
    dataset=dict(type='SyntheticImageDataset', num_samples=128, num_classes=num_classes, image_size=32,
                 seed=1, split='train', pipeline=train_pipeline),
    sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(
    batch_size=32, num_workers=0,
    dataset=dict(type='SyntheticImageDataset', num_samples=64, num_classes=num_classes, image_size=32,
                 seed=1, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, T_max=40, eta_min=1e-5)]
train_cfg = dict(by_epoch=False, max_iters=40, val_interval=20)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(logger=dict(interval=10), checkpoint=dict(type='CheckpointHook', interval=20, by_epoch=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
