"""Tiny zoo + probe shared by the similarity tests, and the torchrun worker.

Run under ``torchrun --nproc_per_node 2 tests/dist_similarity_worker.py OUT.npz WORK_DIR``:
every rank computes LinearCKA (store='features') and MinibatchCKA
(store='accumulators') with ``launcher='pytorch'`` (gloo on CPU); rank 0
saves the matrices to OUT.npz for the test to compare with one process.
"""
import os
import sys

import numpy as np
import torch

# 70 samples in batches of 16: 5 batches (the last one of 6), dealt unevenly to 2 ranks.
PROBE = dict(dataset=dict(type='SyntheticImageDataset', num_samples=70, num_classes=4, image_size=32,
                          pipeline=[dict(type='PackInputs')]),
             batch_size=16, num_samples=70, seed=3)

TINY_ZOO = [
    dict(name='tiny_resnet', adapter='timm', model='resnet18', family='cnn', input_size=[3, 32, 32]),
    dict(name='tiny_vit', adapter='timm', model='vit_tiny_patch16_224', family='vit',
         kwargs=dict(img_size=32, patch_size=8, depth=3), input_size=[3, 32, 32]),
    dict(name='tiny_swin', adapter='timm', model='swin_tiny_patch4_window7_224', family='swin',
         kwargs=dict(img_size=32, window_size=4, embed_dim=24, depths=(1, 1, 2, 1),
                     num_heads=(1, 1, 2, 2)), input_size=[3, 32, 32]),
]


def build_tiny_zoo(n=3):
    """Deterministic random-init tiny models (same weights in every process)."""
    from dery.zoo import build_zoo_model
    zoo = []
    for k, entry in enumerate(TINY_ZOO[:n]):
        torch.manual_seed(k)
        m = build_zoo_model(dict(entry), pretrained=False)
        m.shapes(m.nodes[0])  # trace now, so that later forward counts are the stage's own
        zoo.append(m)
    return zoo


def run_both(zoo, work_dir, launcher='none'):
    from dery.similarity import compute_similarity
    out = {}
    for tag, cfg in (('linear', dict(type='LinearCKA')),
                     ('minibatch', dict(type='MinibatchCKA', store='accumulators',
                                        checkpoint_interval=2))):
        res = compute_similarity(zoo, PROBE, dict(cfg, plot=False, progress=False),
                                 os.path.join(work_dir, tag), launcher=launcher)
        out[tag] = res.full()
        out[tag + '_world'] = np.array(res.meta['world_size'])
    return out


def main(out_path, work_dir):
    zoo = build_tiny_zoo()
    out = run_both(zoo, work_dir, launcher='pytorch')
    import torch.distributed as dist
    if dist.get_rank() == 0:
        np.savez(out_path, **out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
