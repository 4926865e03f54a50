# DeRy(K=4, 90M params, 20G FLOPs) on ImageNet-1k, FT protocol: all trained.
# The paper's 24-model zoo, 100 epochs, batch 8 x 128.
_base_ = ['../_base_/recipes/dery-k4_8xb128-100e_in1k.py']

constraints = dict(params=(None, 90_000_000), flops=(None, 20_000_000_000))
