"""Hooks that turn late, deep failures into one clear line, and that keep checkpoints with their network."""
from mmengine.hooks import Hook

from dery.errors import ConfigError
from dery.registry import HOOKS


def _num_classes(dataset):
    meta = getattr(dataset, 'metainfo', None) or {}
    classes = meta.get('classes')
    return len(classes) if classes else None


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Check that the head's ``num_classes`` matches the data sets' classes."""

    priority = 'VERY_HIGH'

    def _check(self, runner, loader, split):
        if loader is None or not hasattr(loader, 'dataset'):
            return
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        head = getattr(model, 'head', None)
        expected = getattr(head, 'num_classes', None)
        found = _num_classes(loader.dataset)
        if expected is not None and found is not None and expected != found:
            raise ConfigError(
                f'the model head predicts {expected} classes but the {split} data set '
                f'({type(loader.dataset).__name__}) has {found}; set model.head.num_classes={found} '
                '(and data_preprocessor.num_classes) in the config')

    def before_train(self, runner):
        self._check(runner, runner.train_dataloader, 'train')
        if runner.val_loop is not None and hasattr(runner.val_loop, 'dataloader'):
            self._check(runner, runner.val_loop.dataloader, 'val')

    def before_test(self, runner):
        self._check(runner, runner.test_loop.dataloader, 'test')


def _unwrap(model):
    return model.module if hasattr(model, 'module') else model


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Refuse, before anything is loaded, a checkpoint whose weights do not fit the network built.

    mmengine loads checkpoints with ``strict=False``: the weights of another
    network would load partly, with a list of warnings, and training or testing
    would go on. This hook reads the checkpoint the Runner is about to load
    (``load_from``, or the latest one of the work dir when resuming) and stops
    with one line naming the first mismatching keys.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner):
        import os.path as osp

        from mmengine.runner.checkpoint import find_latest_checkpoint

        from dery.utils.checkpoint import check_state_dict, state_dict_of
        from dery.utils.io import safe_torch_load
        path = runner._load_from
        if path is None and runner._resume:
            path = find_latest_checkpoint(runner.work_dir)
        if not path or not osp.isfile(str(path)):
            return  # a URL or nothing: mmengine reports it
        model = _unwrap(runner.model)
        network = 'the network of this config'
        record = getattr(runner.cfg, 'dery_assembly', None)
        if record:
            network = f'the network of {record}'
        check_state_dict(model, state_dict_of(safe_torch_load(path)), path, network)


@HOOKS.register_module()
class AssemblyRecordHook(Hook):
    """Embed the assembly record (``assembly.json``) in every checkpoint the Runner saves.

    A checkpoint then says which network it belongs to: ``tools/test.py``,
    ``dery.apis.get_model`` and ``publish_model.py`` rebuild that network from the
    file alone.

    Args:
        assembly (str): path of the run's ``assembly.json``.
    """

    priority = 'NORMAL'

    def __init__(self, assembly):
        self.assembly = assembly
        self._record = None

    def before_save_checkpoint(self, runner, checkpoint):
        if self._record is None:
            from dery.assembly import Assembly
            self._record = Assembly.load(self.assembly).to_json()
        checkpoint.setdefault('meta', {})['dery_assembly'] = self._record
