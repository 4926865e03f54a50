# Source-task pre-training of one zoo model (tools/demo.py runs it once per model of ./zoo.py).
# The task: ProceduralGlyphDataset, 16 classes of procedurally drawn glyphs at 16x16 (no download).
# The model is the zoo model as DeRy sees it: its stem and all its nodes (a ReassembledBackbone of one
# block, random init), a LayerNorm on transformer outputs, global average pooling and a linear head.
# tools/demo.py sets `model.backbone`, `model.head.in_channels` and the schedule (configs/demo/demo.py's
# `pretrain_recipes`: iterations, lr, warm-up per family) per zoo model and exports the trained
# weights as the zoo model's state dict; run alone, this file pre-trains the first zoo model:
#   python tools/train.py configs/demo/source_pretrain.py
_base_ = ['./zoo.py', '../_base_/demo_training.py']

data_preprocessor = dict(num_classes=16)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ReassembledBackbone', blocks=[dict(model='resnet18_w16', start=0, end=-1)],
                  zoo={{_base_.zoo.models}}, pretrained=False, input_size=(3, 16, 16), stitch_init='random'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=16, in_channels=128,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

_glyphs = dict(type='ProceduralGlyphDataset', num_classes=16, image_size=16, seed=0, cache_dir='work_dirs/demo/data')
train_dataloader = dict(
    batch_size=64,
    # no augmentation: every glyph image is already a fresh random drawing
    dataset=dict(_glyphs, num_samples=12000, split='train', pipeline=[dict(type='PackInputs')]))
val_dataloader = dict(dataset=dict(_glyphs, num_samples=800, split='test', pipeline=[dict(type='PackInputs')]))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=400, T_max=380, eta_min=1e-5),
]
train_cfg = dict(by_epoch=False, max_iters=400, val_interval=400)
default_hooks = dict(logger=dict(interval=20))
