# DeRy(K=4, 90M params, 20G FLOPs) on ImageNet-1k, FZ protocol: the zoo blocks frozen;
# stem, stitches, output norms and head trained. The paper's 24-model zoo, 100 epochs,
# batch 8 x 128.
_base_ = [
    '../_base_/models/dery.py', '../_base_/zoo/dery_zoo24.py',
    '../_base_/datasets/imagenet_bs128_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_100e.py', '../_base_/default_runtime.py'
]

constraints = dict(params=(None, 90_000_000), flops=(None, 20_000_000_000))
# 64k probe images: the streaming CKA keeps O(nodes^2) numbers instead of the features.
similarity = dict(type='MinibatchCKA')
model = dict(backbone=dict(frozen_blocks=True), head=dict(num_classes=1000))
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=2))
