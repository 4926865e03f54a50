"""An example of extending DeRy from outside the ``dery`` package.

Importing this package registers ``RSASimilarity`` (in ``dery.registry.SIMILARITIES``)
and ``BeamSolver`` (in ``dery.registry.SOLVERS``); a config pulls them in with::

    custom_imports = dict(imports=['projects.example'], allow_failed_imports=False)
"""
from .beam_solver import BeamSolver
from .rsa_similarity import RSASimilarity

__all__ = ['RSASimilarity', 'BeamSolver']
