"""The offline end-to-end DeRy demo (``tools/demo.py``): model reuse that pays, on a small CPU machine.

One module per concern, :func:`run_demo` (:mod:`.pipeline`) calls them in order:

* :mod:`.config`: the demo settings, the stage configs (configs/demo/), the machine, the log;
* :mod:`.data`: stage 1, the source (procedural glyphs) and target (digits, shapes) data sets;
* :mod:`.pretrain`: stage 2, the zoo pre-trained on the source task, exported as zoo weights;
* stages 3 and 4 are ``dery.apis.partition`` and ``dery.apis.assemble``;
* :mod:`.finetune`: stage 5, the fine-tunes of the reassembled model and its baselines, and the proxy
  calibration's runs (:mod:`dery.calibration`) on the digits and the second task (shapes);
* :mod:`.jobs`: the training runs (cache keys, the worker pool, the runs' logs);
* :mod:`.report`: stage 6, results, tables, plots and ``report.md``;
* :mod:`.ui`: the rich progress bars and stage lines.

Importing this package is light (the standard library); the stages import
torch, mmengine and DeRy's registries when they run.
"""
from .pipeline import run_demo

__all__ = ['run_demo']
