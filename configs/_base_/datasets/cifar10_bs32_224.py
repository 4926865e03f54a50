# CIFAR-10 through mmpretrain's `CIFAR10` data set (data/cifar10, downloaded python batches),
# upsampled to 224 px as in the paper's downstream recipe (the zoo models see 224 px images), with
# mmpretrain's CIFAR normalisation (images are loaded as RGB). Train: RandomResizedCrop to 224,
# flip, RandAugment, RandomErasing; test: resize to 224. 8 GPUs x 32 = the paper's batch of 256.
# Loaders, evaluators and the DeRy probe and proxy data: downstream_bs32_224.py; this file
# replaces its normalisation and pipelines (CIFAR images are in memory: no LoadImageFromFile).
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'CIFAR10'
data_root = 'data/cifar10'
num_classes = 10
data_preprocessor = dict(
    num_classes=num_classes,
    # RGB format normalization parameters
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    # loaded images are already RGB format
    to_rgb=False)

train_pipeline = [
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in data_preprocessor['mean']], interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=data_preprocessor['mean'],
        fill_std=data_preprocessor['std']),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='Resize', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='test', pipeline=test_pipeline))
test_dataloader = val_dataloader

# ---------------------------------------------------------------- DeRy stages
# Similarity probe: 1/20 of the training set (the paper's choice), test-time pipeline, this
# normalisation.
probe = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline),
    data_preprocessor=dict(
        mean=data_preprocessor['mean'], std=data_preprocessor['std'], to_rgb=False))
# Proxy data (NASWOT and friends): seeded batches of the training set, test pipeline; normalised
# with the top-level data_preprocessor.
target = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline))
