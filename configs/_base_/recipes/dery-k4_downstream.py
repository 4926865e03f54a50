# What the DeRy downstream configs (configs/dery/dery-k4-*_8xb32-ft-*_*.py, r50_swin_cifar.py)
# share: the DeRy stages and classifier (models/dery.py, K = 4, FT protocol) and the runtime, with
# iteration-based checkpoints (every 2000 iterations, the last two kept; logs every 100). A config
# adds a zoo (zoo/*.py), a data set (datasets/*_bs32_224.py), a schedule
# (schedules/downstream_bs256_adamw_*.py), its budget `constraints` and `model.head.num_classes`.
_base_ = ['../models/dery.py', '../default_runtime.py']

default_hooks = dict(
    logger=dict(interval=100), checkpoint=dict(by_epoch=False, interval=2000, max_keep_ckpts=2))
