"""Hooks that turn late, deep failures into one clear line before training starts."""
from mmengine.hooks import Hook

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
            raise ValueError(
                f'the model head predicts {expected} classes but the {split} data set '
                f'({type(loader.dataset).__name__}) has {found}; set model.head.num_classes={found} '
                '(and data_preprocessor.num_classes) in the config')

    def before_train(self, runner):
        self._check(runner, runner.train_dataloader, 'train')
        if runner.val_loop is not None and hasattr(runner.val_loop, 'dataloader'):
            self._check(runner, runner.val_loop.dataloader, 'val')

    def before_test(self, runner):
        self._check(runner, runner.test_loop.dataloader, 'test')
