"""mmengine checkpoints load and resume under torch >= 2.6 with the safe loader on."""
import pickle

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

import dery  # noqa: F401  (registers the allow-list)


class _Tiny(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        y = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=((y - labels)**2).mean())
        return y


def _runner(work_dir, epochs, resume=False):
    data = [dict(inputs=torch.randn(2), labels=torch.randn(1)) for _ in range(8)]
    return Runner(
        model=_Tiny(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, batch_size=4, sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=epochs), resume=resume,
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        default_scope='dery')


def test_runner_resume_with_safe_loader(tmp_path):
    _runner(tmp_path, 2).train()
    ckpt = tmp_path / 'epoch_2.pth'
    # the plain safe loader reads mmengine's checkpoint (message hub included)
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert 'message_hub' in state and 'state_dict' in state
    runner = _runner(tmp_path, 3, resume=True)
    runner.train()
    assert runner.epoch == 3


def test_restricted_getattr_refuses_others():
    import pytest

    from dery.utils.checkpoint import _history_buffer_getattr
    with pytest.raises(pickle.UnpicklingError):
        _history_buffer_getattr(torch, 'load')
