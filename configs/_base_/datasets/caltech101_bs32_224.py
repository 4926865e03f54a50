# Caltech-101 (with the background class), 102 classes: mmpretrain's `Caltech101` data set,
# expected under data/caltech-101 in mmpretrain's layout (see its data set docs). Split 'train':
# training, DeRy probe and proxy data; 'test': validation and test. Augmentation and loaders:
# downstream_bs32_224.py.
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'Caltech101'
data_root = 'data/caltech-101'
num_classes = 102
data_preprocessor = dict(num_classes=num_classes)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='test'))
test_dataloader = val_dataloader

probe = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
