from .io import atomic_save_json, atomic_write, file_digest, load_json, record_timings, safe_torch_load
from .logging import get_logger
from .checkpoint import register_safe_globals

__all__ = ['atomic_write', 'atomic_save_json', 'load_json', 'file_digest', 'record_timings',
           'safe_torch_load', 'get_logger', 'register_safe_globals']
