# What tools/demo.py runs (config paths relative to this file). Every training run uses the stages and
# configs of the normal tools: source_pretrain.py per zoo model, dery_digits.py for DeRy and its baselines,
# dery_shapes.py (a second target task) for the proxy calibration only.
pretrain_config = 'source_pretrain.py'
dery_config = 'dery_digits.py'
work_dir = 'work_dirs/demo'

# Zoo pre-training on the source task (source_pretrain.py: 12000 glyphs, batch 64, AdamW, weight decay
# 0.05, linear warm-up then cosine), one recipe per family (a model's name may have its own entry):
# iterations, peak learning rate, warm-up iterations. The BatchNorm ResNet converges fastest; ConvNeXt
# (LayerNorm, GELU, 7x7 depth-wise convolutions) and Swin train like transformers and need twice its
# schedule; a ViT learns no locality prior: from scratch it stays near chance for ~200 iterations and needs
# three times the ResNet's schedule, a longer warm-up and a lower peak lr (on the ResNet's recipe it ends at
# ~30% source top-1).
pretrain_recipes = dict(
    cnn=dict(iters=400, lr=2e-3, warmup=20),
    convnext_d222_w32=dict(iters=800, lr=2e-3, warmup=40),
    swin=dict(iters=800, lr=2e-3, warmup=40),
    vit=dict(iters=1200, lr=1e-3, warmup=100),
)
finetune_iters = 150          # every fine-tune on the target, batch 32 (dery_digits.py)
eval_interval = 30            # target test accuracy every N iterations (the curves)
warmup_iters = 10             # fine-tuning: linear warm-up, then cosine to the end
seeds = [0, 1, 2]             # every compared model: mean ± std over these
cross_family_seeds = [1, 2, 3]  # the best cross-family assembly (seed 0 chose it among the calibration's runs)

# Proxy calibration (dery.calibration, as tools/analysis_tools/proxy_calibration.py): on the digits task
# (the DeRy config above) and on a second task of another label structure, `num_samples` feasible
# assemblies each (the solver's ranked top-M first, then random ones), every registered proxy scored,
# each assembly fine-tuned once (seed 0) with the demo's schedule; Kendall's tau / Spearman's rho.
calibration = dict(num_samples=12, seed=0, seeds=[0], num_bootstrap=2000, tasks=['dery_shapes.py'])

# `tools/demo.py --quick` (the CI test): same pipeline, tiny schedule, one seed
quick = dict(
    pretrain_recipes=dict(cnn=dict(iters=12, warmup=2), convnext_d222_w32=dict(iters=12, warmup=2),
                          swin=dict(iters=12, warmup=2), vit=dict(iters=12, warmup=2)),
    finetune_iters=8, eval_interval=4, warmup_iters=2, seeds=[0], cross_family_seeds=[1],
    calibration=dict(num_samples=3, seed=1, num_bootstrap=100, tasks=[]),  # one cross-family; 2nd task: full runs
    pretrain_options={'train_dataloader.dataset.num_samples': 256, 'val_dataloader.dataset.num_samples': 64,
                      'train_dataloader.batch_size': 32},
    dery_options={'partitioner.restarts': 4, 'probe.num_samples': 64, 'proxy.num_batches': 1,
                  'proxy.batch_size': 32, 'assembly.stitch_samples': 32, 'solver.top_m': 2})
