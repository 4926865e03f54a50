# What tools/demo.py runs (config paths relative to this file). Every training run uses the stages and
# configs of the normal tools: source_pretrain.py per zoo model, dery_digits.py for DeRy and its baselines.
pretrain_config = 'source_pretrain.py'
dery_config = 'dery_digits.py'
work_dir = 'work_dirs/demo'

pretrain_iters = 400          # per zoo model, batch 64 (source_pretrain.py)
finetune_iters = 150          # every fine-tune on the target, batch 32 (dery_digits.py)
eval_interval = 30            # target test accuracy every N iterations (the curves)
warmup_iters = 10             # linear warm-up, then cosine to the end (pre-training: twice as long)
seeds = [0, 1, 2]             # DeRy and its architecture from random init: mean ± std over these
zoo_seeds = [0, 1, 2]         # zoo models no larger than the reassembled one (the comparison); larger: 1st only

# `tools/demo.py --quick` (the CI test): same pipeline, tiny schedule, one seed
quick = dict(
    pretrain_iters=12, finetune_iters=8, eval_interval=4, warmup_iters=2, seeds=[0], zoo_seeds=[0],
    pretrain_options={'train_dataloader.dataset.num_samples': 256, 'val_dataloader.dataset.num_samples': 64,
                      'train_dataloader.batch_size': 32},
    dery_options={'partitioner.restarts': 4, 'probe.num_samples': 64, 'proxy.num_batches': 1,
                  'proxy.batch_size': 32, 'assembly.stitch_samples': 32, 'solver.top_m': 2})
