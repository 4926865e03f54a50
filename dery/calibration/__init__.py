"""Proxy calibration: how well each training-free proxy ranks candidate networks by their fine-tuned accuracy.

* :mod:`~dery.calibration.stats`: Kendall's tau-b, Spearman's rho, bootstrap intervals;
* :mod:`~dery.calibration.sampling`: feasible assemblies of an assembly problem (solver's top-M + random);
* :mod:`~dery.calibration.runs`: keyed training runs with a result file (mmengine Runner), their cache;
* :mod:`~dery.calibration.core`: :class:`Calibration` (sample, build, score, fine-tune runs, agreement);
* :mod:`~dery.calibration.report`: ``calibration.md``, scatter PNGs, several tasks side by side.

A stage package above :mod:`dery.assembly` (it builds candidates through ``AssemblyContext``); the user
function is :func:`dery.apis.calibrate`, the tool ``tools/analysis_tools/proxy_calibration.py``.
"""
from .core import DEFAULT_OPTIONS, Calibration, calibration_options, proxy_configs
from .report import combine, combined_markdown
from .runs import cached_run, make_run, serial_executor, train_run
from .sampling import feasible_assemblies, sample_assemblies
from .stats import bootstrap_interval, kendall_tau, rank_agreement, spearman_rho

__all__ = ['Calibration', 'DEFAULT_OPTIONS', 'calibration_options', 'proxy_configs', 'combine',
           'combined_markdown', 'cached_run', 'make_run', 'serial_executor', 'train_run', 'feasible_assemblies',
           'sample_assemblies', 'bootstrap_interval', 'kendall_tau', 'rank_agreement', 'spearman_rho']
