"""DeRy: Deep Model Reassembly (Yang et al., NeurIPS 2022) in the OpenMMLab style."""
import warnings

# mmcv-lite has no compiled ops; classification never needs this one
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
from .utils.checkpoint import register_safe_globals
from .version import __version__, version_info

register_safe_globals()

__all__ = ['__version__', 'version_info']
