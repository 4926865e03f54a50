"""Node outputs of zoo models on a fixed set of images (what stitches are fitted on)."""
import torch


class NodeFeatures:
    """Every node's output, and the stem's, of one zoo model on the same images.

    ``input_of(i)`` is what node ``i`` receives in its own model (the stem's
    output for node 0), ``output_of(i)`` what it returns; both in the model's
    layout (:mod:`dery.zoo.layout`).
    """

    def __init__(self, zoo_model, outputs, stem):
        self.name = zoo_model.name
        self.nodes = list(zoo_model.nodes)
        self.outputs = outputs
        self.stem = stem

    def output_of(self, node):
        return self.outputs[node if isinstance(node, str) else self.nodes[node]]

    def input_of(self, index):
        return self.stem if index == 0 else self.outputs[self.nodes[index - 1]]

    @classmethod
    @torch.no_grad()
    def capture(cls, zoo_model, images, batch_size=16):
        outs, stems = [], []
        stem = zoo_model.stem()
        for chunk in images.split(batch_size):
            outs.append(zoo_model.node_outputs(chunk))
            stems.append(stem(chunk))
        outputs = {n: torch.cat([o[n] for o in outs]) for n in zoo_model.nodes}
        return cls(zoo_model, outputs, torch.cat(stems))


def capture_node_features(zoo, names, images, batch_size=16):
    """``{name: NodeFeatures}`` of the zoo models ``names`` on ``images``."""
    return {name: NodeFeatures.capture(zoo[name], images, batch_size) for name in names}


__all__ = ['NodeFeatures', 'capture_node_features']
