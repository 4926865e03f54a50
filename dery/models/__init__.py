"""Reassembled networks: ``ReassembledBackbone``, stitch layers, complexity."""
from .backbone import ReassembledBackbone
from .complexity import model_complexity
from .stitch import StitchLayer

__all__ = ['ReassembledBackbone', 'StitchLayer', 'model_complexity']
