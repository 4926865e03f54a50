"""Python entry points of the three stages (notebooks, tools, tests)."""
from .assemble import AssemblyError, assemble, assembly_table, backbone_cfg, resolve_model_cfg
from .common import build_zoo, work_dir_of, zoo_entries
from .model_index import get_model, get_model_info, list_models
from .partition import partition, partition_table

__all__ = ['assemble', 'partition', 'partition_table', 'AssemblyError', 'backbone_cfg', 'build_zoo',
           'assembly_table', 'resolve_model_cfg', 'get_model', 'get_model_info', 'list_models',
           'work_dir_of', 'zoo_entries']
