# ImageNet-1k through mmpretrain's `ImageNet` data set (data/imagenet: train/, val/ and meta/),
# mmpretrain's Swin-style 224 px pipeline (RandomResizedCrop, flip, RandAugment, RandomErasing;
# test: short edge 256, centre crop 224) as in the original DeRy code; 8 GPUs x 128 = 1024.
dataset_type = 'ImageNet'
data_root = 'data/imagenet'
num_classes = 1000
data_preprocessor = dict(
    num_classes=num_classes,
    # RGB format normalization parameters
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    # convert image from BGR to RGB
    to_rgb=True,
)

bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='val', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator

# ---------------------------------------------------------------- DeRy stages
# Similarity probe: 1/20 of the training set (the paper's choice; 64k images), test pipeline.
# The DeRy ImageNet configs use the streaming MinibatchCKA for it (memory independent of the
# number of samples).
probe = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline),
    num_samples=0.05,
    batch_size=256,
    num_workers=8,
    seed=0,
    data_preprocessor=dict(
        type='ClsDataPreprocessor', mean=data_preprocessor['mean'], std=data_preprocessor['std'],
        to_rgb=True))
# Proxy data (NASWOT and friends): seeded batches of the training set, test pipeline.
target = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline))
