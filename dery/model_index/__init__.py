"""The model index: ``model-index.yml`` and the metafiles it imports (read: :mod:`.index`)."""
from .index import ModelInfo, default_model_index, find_assembly, get_model_info, list_models, load_model_index

__all__ = ['ModelInfo', 'default_model_index', 'load_model_index', 'list_models', 'get_model_info',
           'find_assembly']
