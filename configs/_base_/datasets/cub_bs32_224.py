# CUB-200-2011, 200 classes: mmpretrain's `CUB` data set, expected under data/CUB_200_2011 in
# mmpretrain's layout (see its data set docs). Split 'train': training, DeRy probe and proxy data;
# 'test': validation and test. Augmentation and loaders: downstream_bs32_224.py.
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'CUB'
data_root = 'data/CUB_200_2011'
num_classes = 200
data_preprocessor = dict(num_classes=num_classes)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='test'))
test_dataloader = val_dataloader

probe = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
