"""DeRy from Python: the user-facing entry points (as mmpretrain's ``apis``).

``partition(cfg)`` (stages 1 + 2), ``assemble(cfg)`` (stage 3), and the model
index: ``list_models``, ``get_model_info``, ``get_model``. The algorithms live
in their packages (``dery.similarity``, ``dery.partition``, ``dery.assembly``).
"""
from .assemble import assemble
from .inference import inference_model, init_model
from .model_index import get_model, get_model_info, list_models
from .partition import partition
from .train import prepare_stages

__all__ = ['assemble', 'partition', 'get_model', 'get_model_info', 'list_models',
           'prepare_stages', 'init_model', 'inference_model']
from .calibration import calibrate  # noqa: E402  (proxy calibration, tools/analysis_tools/proxy_calibration.py)
__all__ += ['calibrate']
