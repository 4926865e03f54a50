"""The model zoo: entries, adapters, node enumeration, exact cuts, the tensor-layout vocabulary."""
from .adapters import (BaseZooAdapter, LocalAdapter, MMPretrainAdapter, TimmAdapter,
                       TorchvisionAdapter, WeightsUnavailableError, build_zoo_model)
from .analysis import count_flops, count_params
from .cache import ZooCache, ZooCard
from .dissect import CallConvention, DissectionError, register_call_convention
from .entry import ZooEntry, ZooError, default_zoo_path, entries_from_config, load_zoo, resolve_entry
from .features import NodeFeatures, capture_node_features
from .layout import FAMILIES, POOLINGS, TensorSpec
from .zoo_model import ZooModel

__all__ = [
    'BaseZooAdapter', 'TimmAdapter', 'MMPretrainAdapter', 'TorchvisionAdapter', 'LocalAdapter',
    'WeightsUnavailableError', 'build_zoo_model', 'count_flops', 'count_params', 'CallConvention',
    'DissectionError', 'register_call_convention', 'ZooEntry', 'ZooError', 'default_zoo_path',
    'load_zoo', 'resolve_entry', 'entries_from_config', 'FAMILIES', 'POOLINGS', 'TensorSpec',
    'ZooModel', 'ZooCache', 'ZooCard', 'NodeFeatures', 'capture_node_features'
]
