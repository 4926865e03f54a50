# DTD (Describable Textures), 47 classes: mmpretrain's `DTD` data set, expected under data/dtd in
# mmpretrain's layout (see its data set docs). Split 'trainval': training, DeRy probe and proxy
# data; 'test': validation and test. Augmentation and loaders: downstream_bs32_224.py.
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'DTD'
data_root = 'data/dtd'
num_classes = 47
data_preprocessor = dict(num_classes=num_classes)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='trainval'))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='test'))
test_dataloader = val_dataloader

probe = dict(dataset=dict(type=dataset_type, data_root=data_root, split='trainval'))
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='trainval'))
