# ImageNet-1k through mmpretrain's `ImageNet` data set (data/imagenet: train/, val/ and meta/),
# mmpretrain's Swin-style 224 px pipeline (RandomResizedCrop, flip, RandAugment, RandomErasing;
# test: short edge 256, centre crop 224) as in the original DeRy code; 8 GPUs x 128 = 1024.
# Pipelines, normalisation and evaluators: downstream_bs32_224.py; this file sets the data set,
# the splits ('train'; 'val' for validation and test) and the larger batches.
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'ImageNet'
data_root = 'data/imagenet'
num_classes = 1000
data_preprocessor = dict(num_classes=num_classes)

train_dataloader = dict(
    batch_size=128, num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='train'))
val_dataloader = dict(
    batch_size=128, num_workers=8,
    dataset=dict(type=dataset_type, data_root=data_root, split='val'))
test_dataloader = val_dataloader

# ---------------------------------------------------------------- DeRy stages
# Similarity probe: 1/20 of the training set (the paper's choice; 64k images), test pipeline.
# The DeRy ImageNet configs use the streaming MinibatchCKA for it (memory independent of the
# number of samples).
probe = dict(
    dataset=dict(type=dataset_type, data_root=data_root, split='train'),
    batch_size=256,
    num_workers=8)
# Proxy data (NASWOT and friends): seeded batches of the training set, test pipeline.
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
