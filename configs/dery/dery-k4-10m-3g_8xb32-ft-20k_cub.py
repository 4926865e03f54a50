# DeRy(K=4, 10M params, 3G FLOPs) on CUB-200-2011: the paper's 24-model zoo, FT protocol (all
# trained), the paper's AdamW recipe for 20k iterations at a batch of 8 x 32.
_base_ = [
    '../_base_/recipes/dery-k4_downstream.py', '../_base_/zoo/dery_zoo24.py',
    '../_base_/datasets/cub_bs32_224.py',
    '../_base_/schedules/downstream_bs256_adamw_20k.py'
]

constraints = dict(params=(None, 10_000_000), flops=(None, 3_000_000_000))
model = dict(head=dict(num_classes=_base_.num_classes))
