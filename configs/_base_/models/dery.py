# DeRy with K = 4 equivalence sets (the paper's setting): the settings of the partition and
# reassembly stages, and the classifier trained on the reassembled backbone. A leaf config adds
# the zoo (zoo/*.py), the data (datasets/*.py: also the probe and proxy data), the schedule, the
# budget `constraints` and `model.head.num_classes`.

# ---------------------------------------------------------------- stage 1: similarity
# Linear CKA between node outputs, spatially averaged (the paper's metric).
similarity = dict(type='LinearCKA', pooling='avg')

# ---------------------------------------------------------------- stage 2: partition
# Cover-set partition: K = 4 blocks per model, block size slack eps = 0.2, 200 restarts.
partitioner = dict(type='CoverSetPartitioner', num_sets=4, eps=0.2, restarts=200, seed=0)

# ---------------------------------------------------------------- stage 3: reassembly
# NASWOT on 5 x 32 target images ranks the integer program's top-10 solutions.
proxy = dict(type='NASWOT', num_batches=5, batch_size=32, seed=0)
solver = dict(type='ILPSolver', top_m=10)
# Stem of the first block's source model; stitches fitted by least squares on 64 probe images.
# Other options (the original code's network: configs/dery/paper/): stem=dict(type='resnet',
# channels=C) (a fresh ResNet stem), resolution='chain' (blocks at the resolution the chain delivers,
# stitches stride, never interpolate; default 'native': each block at its own model's resolution),
# stitch=dict(type='NormActStitch') (BN/LN -> conv/linear -> LeakyReLU; default 'StitchLayer', affine),
# stitch_consecutive=True (a stitch between consecutive cuts of one model), blocks=[dict(model,
# start, end[, stride])] (a fixed assembly: no partition, no search).
assembly = dict(stem=dict(type='source'), stitch_init='lstsq', stitch_samples=64)

# ---------------------------------------------------------------- stage 4: training
# `assembly='auto'`: the architecture and initial weights come from WORK_DIR/assembly.json and
# assembled_init.pth (tools/train.py runs the earlier stages when they are missing).
# frozen_blocks=False is the FT protocol; True (FZ) freezes the zoo blocks and trains the stem,
# stitches, output norms and head.
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ReassembledBackbone', assembly='auto', frozen_blocks=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels='auto',
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5),
        cal_acc=False),
    # Mixup (alpha 0.1) or CutMix (alpha 1.0), each on half of the batches (the original code).
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.1), dict(type='CutMix', alpha=1.0)],
                   probs=[0.5, 0.5]),
)
