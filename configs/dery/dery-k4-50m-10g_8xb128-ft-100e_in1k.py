# DeRy(K=4, 50M params, 10G FLOPs) on ImageNet-1k, FT protocol: all trained.
# The paper's 24-model zoo, 100 epochs,
# batch 8 x 128.
_base_ = [
    '../_base_/models/dery.py', '../_base_/zoo/dery_zoo24.py',
    '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_100e.py', '../_base_/default_runtime.py'
]

constraints = dict(params=(None, 50_000_000), flops=(None, 10_000_000_000))
# 64k probe images: the streaming CKA keeps O(nodes^2) numbers instead of the features.
similarity = dict(type='MinibatchCKA')
model = dict(backbone=dict(frozen_blocks=False), head=dict(num_classes=1000))
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=2))
