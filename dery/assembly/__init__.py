"""Stage 3, reassembly: candidate tables, surrogate scores, candidate networks, the record.

* :mod:`~dery.assembly.tables`: candidates and measured cost tables
  (:class:`AssemblyTables`);
* :mod:`~dery.assembly.surrogate`: per-block scores, the integer program's
  objective;
* :mod:`~dery.assembly.context`: :class:`AssemblyContext` (the problem plus
  the proxy score function) and :func:`build_classifier`;
* :mod:`~dery.assembly.record`: :class:`Assembly`, the ``assembly.json``
  record;
* :mod:`~dery.assembly.config`: ``assembled.py``, ``assembly='auto'`` and fixed
  assemblies (``assembly = dict(blocks=[...])``);
* :mod:`~dery.assembly.stage`: the stage end to end (:func:`run_assembly`; a
  fixed assembly: :func:`run_fixed_assembly`).
"""
from .config import (assembled_config_text, assembly_of_checkpoint, fixed_record, resolve_model_cfg, use_assembly,
                     use_fixed_assembly)
from .context import AssemblyContext, build_classifier
from .record import Assembly, AssemblyBlock, AssemblyError, StitchRecord
from .stage import run_assembly, run_fixed_assembly
from .surrogate import naswot_block_scores
from .tables import AssemblyTables

__all__ = ['Assembly', 'AssemblyBlock', 'StitchRecord', 'AssemblyError', 'AssemblyContext', 'AssemblyTables',
           'build_classifier', 'naswot_block_scores', 'assembled_config_text', 'resolve_model_cfg',
           'use_assembly', 'assembly_of_checkpoint', 'fixed_record', 'use_fixed_assembly',
           'run_assembly', 'run_fixed_assembly']
