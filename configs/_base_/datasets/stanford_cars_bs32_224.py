# Stanford Cars, 196 classes: mmpretrain's `StanfordCars` data set, expected under
# data/Stanford_Cars in mmpretrain's layout (see its data set docs). Split 'train': training, DeRy
# probe and proxy data; 'test': validation and test. Augmentation and loaders:
# downstream_bs32_224.py.
_base_ = ['./downstream_bs32_224.py']

dataset_type = 'StanfordCars'
data_root = 'data/Stanford_Cars'
num_classes = 196
data_preprocessor = dict(num_classes=num_classes)

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split='test'))
test_dataloader = val_dataloader

probe = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
target = dict(dataset=dict(type=dataset_type, data_root=data_root, split='train'))
