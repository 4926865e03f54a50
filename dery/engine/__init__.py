from .hooks import AssemblyRecordHook, CheckpointCheckHook, DataCheckHook

__all__ = ['DataCheckHook', 'CheckpointCheckHook', 'AssemblyRecordHook']
