import pytest

from dery.registry import (DATASETS, MODELS, PARTITIONERS, PROXIES, SIMILARITIES, SOLVERS,
                           ZOO_ADAPTERS)


def test_children_of_mmpretrain_resolve_plain_names():
    assert MODELS.get('ImageClassifier').__name__ == 'ImageClassifier'
    assert MODELS.get('LinearClsHead') is not None
    assert DATASETS.get('CIFAR100') is not None
    assert DATASETS.get('SyntheticImageDataset') is not None
    assert MODELS.scope == 'dery'


@pytest.mark.parametrize('registry', [ZOO_ADAPTERS, SIMILARITIES, PARTITIONERS, PROXIES, SOLVERS])
def test_unknown_type_lists_registered_names(registry):

    class ListedInErrors:
        pass

    registry.register_module(module=ListedInErrors, force=True)
    try:
        with pytest.raises(KeyError) as info:
            registry.build(dict(type='DoesNotExist'))
    finally:
        registry.module_dict.pop('ListedInErrors')
    msg = str(info.value)
    assert "'DoesNotExist' is not registered" in msg and 'registered names:' in msg
    names = msg.split('registered names:')[1]
    assert 'ListedInErrors' in names
    assert all(n in names for n in registry.module_dict), msg


def test_zoo_adapters_registered():
    assert {'timm', 'mmpretrain', 'torchvision', 'local'} <= set(ZOO_ADAPTERS.module_dict)


def test_user_registration_through_registry():

    @SOLVERS.register_module(force=True)
    class MyTestSolver:

        def __init__(self, k=1):
            self.k = k

    assert SOLVERS.build(dict(type='MyTestSolver', k=3)).k == 3
