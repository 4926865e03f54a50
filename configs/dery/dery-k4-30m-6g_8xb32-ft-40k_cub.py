# DeRy(K=4, 30M params, 6G FLOPs) on CUB-200-2011: the paper's 24-model zoo, FT protocol (all
# trained), the paper's AdamW recipe for 40k iterations at a batch of 8 x 32.
_base_ = [
    '../_base_/recipes/dery-k4_downstream.py', '../_base_/zoo/dery_zoo24.py',
    '../_base_/datasets/cub_bs32_224.py',
    '../_base_/schedules/downstream_bs256_adamw_40k.py'
]

constraints = dict(params=(None, 30_000_000), flops=(None, 6_000_000_000))
model = dict(head=dict(num_classes=_base_.num_classes))
