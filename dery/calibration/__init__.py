"""Proxy calibration: how well each training-free proxy ranks candidate networks by their fine-tuned accuracy.

* :mod:`~dery.calibration.stats`: Kendall's tau-b, Spearman's rho, bootstrap intervals;
* :mod:`~dery.calibration.sampling`: feasible assemblies of an assembly problem (solver's top-M + random);
* :mod:`~dery.calibration.runs`: keyed training runs with a result file (mmengine Runner), their cache;
* :mod:`~dery.calibration.core`: :class:`Calibration` (sample, build, score, fine-tune runs, agreement);
* :mod:`~dery.calibration.report`: ``calibration.md``, scatter PNGs, several tasks side by side.

A stage package above :mod:`dery.assembly` (it builds candidates through ``AssemblyContext``); the user
function is :func:`dery.apis.calibrate`, the tool ``tools/analysis_tools/proxy_calibration.py``.
Importing the package is light: the names below load their module on first use.
"""
import importlib

_NAMES = dict(
    Calibration='core', DEFAULT_OPTIONS='core', calibration_options='core', proxy_configs='core',
    combine='report', combined_markdown='report',
    RunPool='runs', cached_run='runs', make_run='runs', serial_executor='runs', train_run='runs',
    feasible_assemblies='sampling', sample_assemblies='sampling',
    bootstrap_interval='stats', kendall_tau='stats', rank_agreement='stats', spearman_rho='stats')

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f'.{_NAMES[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
