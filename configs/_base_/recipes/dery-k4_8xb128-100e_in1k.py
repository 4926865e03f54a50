# What the DeRy ImageNet-1k configs (configs/dery/dery-k4-*_8xb128-{ft,fz}-100e_in1k.py) share:
# the paper's 24-model zoo, K = 4, ImageNet-1k at batch 8 x 128, 100 epochs, FT protocol (all
# trained). Each FT config adds its budget `constraints`; each FZ config is its FT config with
# `model.backbone.frozen_blocks=True`.
_base_ = [
    '../models/dery.py', '../zoo/dery_zoo24.py', '../datasets/imagenet_bs128_224.py',
    '../schedules/imagenet_bs1024_adamw_100e.py', '../default_runtime.py'
]

# 64k probe images: the streaming CKA keeps O(nodes^2) numbers instead of the features.
similarity = dict(type='MinibatchCKA')
model = dict(backbone=dict(frozen_blocks=False), head=dict(num_classes=_base_.num_classes))
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=2))
