"""Export a pre-trained zoo model as a plain state dict that its zoo entry loads (``weights: path``)."""
import os
import os.path as osp

__all__ = ['export_zoo_weights']


def export_zoo_weights(backbone, entry, path, input_size=(3, 16, 16)):
    """Save a single-model ``ReassembledBackbone``'s weights as its zoo model's plain state dict.

    ``backbone`` holds the stem and every node of the zoo model ``entry`` (one
    block, first node to last). A fresh random-init zoo model is built, the
    trained backbone loaded into a backbone that shares that model's modules,
    and the model's own ``state_dict()`` saved: its keys are those of
    ``build_zoo_model(entry, pretrained=False)``, so the entry with
    ``weights: path`` loads it through the normal adapter. Parameters the
    nodes never use (final norms, the classifier) keep their random init.
    The file is then re-loaded through the adapter and compared.
    """
    import torch

    from dery.models import ReassembledBackbone
    from dery.zoo import ZooCache, build_zoo_model
    entry = {k: v for k, v in dict(entry).items() if k != 'weights'}
    cache = ZooCache([entry], pretrained=False, input_size=input_size)
    fresh = ReassembledBackbone(backbone.block_cfgs, zoo=cache, stem=backbone.stem_type, stitch_init='random',
                                out_indices=backbone.out_indices, out_norm=len(backbone.out_norms) > 0)
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    state = {k: v.detach().cpu().clone() for k, v in cache[entry['name']].model.state_dict().items()}
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)
    loaded = build_zoo_model(dict(entry, weights=osp.abspath(path)), pretrained=True).model.state_dict()
    bad = [k for k, v in state.items() if k not in loaded or not torch.equal(loaded[k].cpu(), v)]
    if bad:
        raise RuntimeError(f'exported zoo weights {path} do not load back into {entry["name"]} '
                           f'({len(bad)} tensors differ, e.g. {bad[:3]})')
    return path
