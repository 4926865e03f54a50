"""Reassembled networks: ``ReassembledBackbone``, stitch layers, complexity."""
from .backbone import ReassembledBackbone, ZooCache
from .complexity import model_complexity
from .stitch import StitchLayer

__all__ = ['ReassembledBackbone', 'ZooCache', 'StitchLayer', 'model_complexity']
