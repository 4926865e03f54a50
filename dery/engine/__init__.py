from .hooks import DataCheckHook

__all__ = ['DataCheckHook']
