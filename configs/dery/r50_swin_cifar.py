# The paper's motivating example (DeRy, Sec. 1): a ResNet-50 + Swin-T zoo reassembled for
# CIFAR-100. The paper's hand-made hybrid (R50 stages 1-2 + Swin-T stages 3-4, about 28M params)
# reaches 85.77 top-1 against 84.67 (R50) and 85.56 (Swin-T); here the partition and the solver
# choose: K = 4 blocks per model, NASWOT proxy, integer program, a budget of 30M params and
# 6G FLOPs around that hybrid. FT protocol, the paper's downstream recipe for 40k iterations.
#
#   bash tools/dist_train.sh configs/dery/r50_swin_cifar.py 8
#
# Fine-tuning options (FZ, lr multipliers, AMP, EMA, gradient clipping) are shown in
# r50_swin_cifar_finetune-options.py and docs/train.md.
_base_ = [
    '../_base_/recipes/dery-k4_downstream.py', '../_base_/zoo/r50_swin_t.py',
    '../_base_/datasets/cifar100_bs32_224.py',
    '../_base_/schedules/downstream_bs256_adamw_40k.py'
]

constraints = dict(params=(None, 30_000_000), flops=(None, 6_000_000_000))
# two models, K = 4: 16 candidate assemblies, all scored by the proxy
solver = dict(type='ILPSolver', top_m=16)
model = dict(backbone=dict(frozen_blocks=False), head=dict(num_classes=_base_.num_classes))
