"""Importing this module registers every DeRy module, in DeRy's registries and in mmpretrain's.

DeRy configs and every ``assembled.py`` name it in ``custom_imports``, so that
mmpretrain's own tools, which look names up in mmpretrain's registries, find
``ReassembledBackbone``, DeRy's data sets and hooks (:func:`dery.registry.register_all_modules`)::

    custom_imports = dict(imports=['dery.all_modules'], allow_failed_imports=False)

A config with its own ``custom_imports`` lists it there too (lists are not merged with the base's).
"""
from dery.registry import register_all_modules

register_all_modules(init_default_scope=False)
