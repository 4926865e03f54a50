# CIFAR-100 through mmpretrain's `CIFAR100` data set (data/cifar100), upsampled to 224 px; the
# pipelines of cifar10_bs32_224.py with mmpretrain's CIFAR-100 normalisation.
_base_ = ['./cifar10_bs32_224.py']

dataset_type = 'CIFAR100'
data_root = 'data/cifar100'
num_classes = 100
data_preprocessor = dict(
    num_classes=num_classes,
    # RGB format normalization parameters
    mean=[129.304, 124.070, 112.434],
    std=[68.170, 65.392, 70.418],
    # loaded images are already RGB format
    to_rgb=False)

# cifar10_bs32_224.py's train pipeline, restated: RandAugment's padding and RandomErasing's fill
# are computed from the mean above.
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

train_dataloader = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='test'))
test_dataloader = val_dataloader

probe = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train'),
    data_preprocessor=dict(mean=data_preprocessor['mean'], std=data_preprocessor['std']))
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
