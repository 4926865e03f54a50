from .checkpoint import register_safe_globals
from .config import as_config, default_work_dir, to_plain, work_dir_of
from .format import human
from .io import atomic_save_json, atomic_write, file_digest, load_json, record_timings, safe_torch_load
from .logging import debug_logging, get_logger, quiet_mmengine

__all__ = ['atomic_write', 'atomic_save_json', 'load_json', 'file_digest', 'record_timings',
           'safe_torch_load', 'get_logger', 'quiet_mmengine', 'debug_logging', 'register_safe_globals', 'to_plain',
           'as_config', 'work_dir_of', 'default_work_dir', 'human']
