# DeRy(K=4, 30M params, 6G FLOPs) on ImageNet-1k, FZ protocol: the zoo blocks frozen;
# stem, stitches, output norms and head trained. The paper's 24-model zoo, 100 epochs,
# batch 8 x 128: the FT config of the same budget with frozen blocks.
_base_ = ['./dery-k4-30m-6g_8xb128-ft-100e_in1k.py']

model = dict(backbone=dict(frozen_blocks=True))
