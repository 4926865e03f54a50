# Shared base of the downstream data sets read from image files (FGVC-Aircraft, Caltech-101,
# Stanford Cars, CUB-200, DTD, Flowers-102, Oxford-IIIT Pets): the paper's fine-tuning
# augmentation at 224 px with mmpretrain's ImageNet normalisation. Train: RandomResizedCrop,
# flip, RandAugment (timm's increasing policies, 2 ops, magnitude 9 +- 0.5), RandomErasing.
# Test: resize the short edge to 256, centre crop 224. 8 GPUs x 32 = the paper's batch of 256.
# Each data set file (e.g. cub_bs32_224.py) sets the type, root, splits and number of classes of
# the five data sets below (train, val, test, probe, target). imagenet_bs128_224.py is this with
# ImageNet-1k and larger batches; cifar10_bs32_224.py replaces the pipelines and normalisation.
dataset_type = None  # set by the data set file
data_root = None
num_classes = None
data_preprocessor = dict(
    num_classes=num_classes,
    # RGB format normalization parameters
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    # convert image from BGR to RGB
    to_rgb=True,
)

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
        # images are loaded as BGR: RandAugment pads and RandomErasing fills with the BGR mean
        hparams=dict(pad_val=[round(x) for x in data_preprocessor['mean'][::-1]],
                     interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=data_preprocessor['mean'][::-1],
        fill_std=data_preprocessor['std'][::-1]),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator

# ---------------------------------------------------------------- DeRy stages
# Similarity probe: 1/20 of the target training set (the paper's choice), test-time pipeline.
probe = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline),
    num_samples=0.05,
    batch_size=64,
    num_workers=4,
    seed=0,
    data_preprocessor=dict(
        type='ClsDataPreprocessor', mean=data_preprocessor['mean'], std=data_preprocessor['std'],
        to_rgb=True))
# Proxy data (NASWOT and friends): seeded batches of the target training set, test pipeline;
# normalised with the top-level data_preprocessor.
target = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=test_pipeline))
