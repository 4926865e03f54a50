"""Per-block surrogate scores: the integer program's linear objective.

For each block, the NASWOT log-determinant of the binary activation-pattern
kernel of the block's node outputs inside its source model, on the target
batches. NASWOT is not additive over blocks, but a block whose units separate
the target samples well keeps doing so after stitching; the whole-model proxy
re-ranks the ILP's top-M solutions, which corrects the surrogate's error.
"""
import torch

__all__ = ['naswot_block_scores']


@torch.no_grad()
def naswot_block_scores(part, zoo, images, max_units=65536, seed=0):
    """``{'model:j': score}``: per-block NASWOT log-det of the node-output sign patterns."""
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, mb in part.models.items():
        zm = zoo[name]
        outs = zm.node_outputs(images)
        kernels = []
        for node in zm.nodes:
            codes = (outs[node].flatten(1) > 0).float()
            if codes.shape[1] > max_units:
                codes = codes[:, torch.randperm(codes.shape[1], generator=g)[:max_units]]
            kernels.append(codes @ codes.T + (1 - codes) @ (1 - codes).T)
        for j, b in enumerate(mb.blocks):
            s, e = zm.index(b.start), zm.index(b.end)
            k = sum(kernels[s:e + 1]).double()
            k = k + 1e-3 * torch.eye(k.shape[0], dtype=k.dtype)
            scores[f'{name}:{j}'] = float(torch.linalg.slogdet(k)[1])
    return scores
