"""The model zoo: entries, adapters, node enumeration and exact cuts."""
from .adapters import (BaseZooAdapter, LocalAdapter, MMPretrainAdapter, TimmAdapter,
                       TorchvisionAdapter, WeightsUnavailableError, build_zoo_model)
from .analysis import count_flops, count_params
from .dissect import CallConvention, DissectionError, register_call_convention
from .entry import ZooEntry, ZooError, default_zoo_path, load_zoo, resolve_entry
from .zoo_model import FAMILIES, ZooModel

__all__ = [
    'BaseZooAdapter', 'TimmAdapter', 'MMPretrainAdapter', 'TorchvisionAdapter', 'LocalAdapter',
    'WeightsUnavailableError', 'build_zoo_model', 'count_flops', 'count_params', 'CallConvention',
    'DissectionError', 'register_call_convention', 'ZooEntry', 'ZooError', 'default_zoo_path',
    'load_zoo', 'resolve_entry', 'FAMILIES', 'ZooModel'
]
