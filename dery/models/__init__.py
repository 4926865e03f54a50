"""Reassembled networks: ``ReassembledBackbone``, stitch layers, complexity."""
from .backbone import ReassembledBackbone, chain_stride, normalize_stem
from .complexity import complexity_by_part, model_complexity
from .stitch import NormActStitch, StitchLayer, build_stitch

__all__ = ['ReassembledBackbone', 'StitchLayer', 'NormActStitch', 'build_stitch', 'chain_stride', 'normalize_stem',
           'model_complexity', 'complexity_by_part']
