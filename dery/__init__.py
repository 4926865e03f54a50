"""DeRy: Deep Model Reassembly (Yang et al., NeurIPS 2022) in the OpenMMLab style.

``import dery`` is light (the command-line tools answer ``--help`` before
torch loads); the registries (``dery.registry``) and every module that builds
something bring in torch, mmengine and mmpretrain, and allow-list what
mmengine checkpoints need for torch's safe loader (:mod:`dery.utils.checkpoint`).
"""
import warnings

# mmcv-lite has no compiled ops; classification never needs this one
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
from .version import __version__, version_info  # noqa: E402

__all__ = ['__version__', 'version_info']
