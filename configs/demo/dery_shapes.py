# DeRy on the demo's second target task, for the proxy calibration: the glyph-pretrained zoo of ./zoo.py
# reassembled for procedurally drawn shapes (ProceduralShapesDataset: an ellipse, triangle, rectangle or
# cross, outlined or filled; 8 classes = shape x fill, a factorised label unlike the digits' ten classes),
# 160 training images (20 per class), 800 test images, in random colours with noise like the digits.
# Everything else (zoo, similarity, partitioner, proxy, solver, budget, assembly options, head, optimizer,
# schedule) is ./dery_digits.py's, so the two tasks measure the same DeRy config.
_base_ = ['./dery_digits.py']

num_classes = 8
num_train = 160
data_preprocessor = dict(_base_.data_preprocessor, num_classes=num_classes)
_shapes = dict(type='ProceduralShapesDataset', image_size=16, seed=0)

probe = dict(dataset=dict(_shapes, _delete_=True, split='train', num_samples=num_train,
                          pipeline=[dict(type='PackInputs')]),
             num_samples=num_train, data_preprocessor=data_preprocessor)
target = dict(dataset=dict(_shapes, _delete_=True, split='train', num_samples=num_train,
                           pipeline=[dict(type='PackInputs')]),
              data_preprocessor=data_preprocessor)
model = dict(head=dict(num_classes=num_classes))

train_dataloader = dict(
    dataset=dict(_shapes, _delete_=True, split='train', num_samples=num_train,
                 pipeline=[dict(type='RandomCrop', crop_size=16, padding=2), dict(type='PackInputs')]))
val_dataloader = dict(dataset=dict(_shapes, _delete_=True, split='test', num_samples=800,
                                   pipeline=[dict(type='PackInputs')]))
test_dataloader = val_dataloader
