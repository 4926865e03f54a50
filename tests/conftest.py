import os

# No network here or in CI: make hub clients fail fast instead of retrying.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


# ----------------------------------------------------------------------------- shared tiny run
import os.path as _osp  # noqa: E402

import pytest  # noqa: E402

TINY_ROOT = _osp.dirname(_osp.dirname(_osp.abspath(__file__)))
TINY_CONFIG = _osp.join(TINY_ROOT, 'configs', 'dery', 'tiny_cpu.py')
# short stages: the point is the plumbing, not the numbers
TINY_OPTS = ['partitioner.restarts=5', 'proxy.num_batches=1', 'solver.top_m=2', 'assembly.stitch_samples=16',
             'probe.num_samples=48', 'probe.batch_size=8', 'similarity.checkpoint_interval=1',
             'similarity.plot=summary']


def tiny_env():
    path = os.pathsep.join(p for p in (TINY_ROOT, os.environ.get('PYTHONPATH')) if p)
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=path, HF_HUB_OFFLINE='1', MPLBACKEND='Agg',
                GLOO_SOCKET_IFNAME=os.environ.get('GLOO_SOCKET_IFNAME', 'lo'))


@pytest.fixture(scope='session')
def tiny_reference(tmp_path_factory):
    """One uninterrupted ``tools/assemble.py`` run of the tiny config (read-only: copy it to change it)."""
    import subprocess
    import sys
    work_dir = str(tmp_path_factory.mktemp('tiny_ref') / 'work')
    cmd = [sys.executable, _osp.join(TINY_ROOT, 'tools', 'assemble.py'), TINY_CONFIG, '--work-dir', work_dir,
           '--cfg-options', *TINY_OPTS]
    proc = subprocess.run(cmd, cwd=TINY_ROOT, env=tiny_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return work_dir


TINY_TRAIN_OPTS = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
                   'default_hooks.logger.interval=1', 'train_dataloader.batch_size=8']


def have_tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope='session')
def tiny_trained(tmp_path_factory, tiny_reference):
    """The tiny run trained for 2 iterations by ``tools/train.py`` (read-only): ``iter_2.pth`` (with its
    assembly record), ``assembled.py``, the json log, and TensorBoard event files when tensorboard is installed
    (the config adds ``TensorboardVisBackend`` as docs/train.md shows)."""
    import shutil
    import subprocess
    import sys
    root = tmp_path_factory.mktemp('tiny_trained')
    work = str(root / 'work')
    shutil.copytree(tiny_reference, work)
    config = root / 'tiny_cpu_tb.py'
    backends = "dict(type='LocalVisBackend')" + (", dict(type='TensorboardVisBackend')" if have_tensorboard() else '')
    config.write_text(f'_base_ = [{TINY_CONFIG!r}]\nvisualizer = dict(vis_backends=[{backends}])\n')
    cmd = [sys.executable, _osp.join(TINY_ROOT, 'tools', 'train.py'), str(config), '--work-dir', work,
           '--cfg-options', *TINY_OPTS, *TINY_TRAIN_OPTS]
    proc = subprocess.run(cmd, cwd=TINY_ROOT, env=tiny_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert _osp.isfile(_osp.join(work, 'iter_2.pth')), (proc.stdout + proc.stderr)[-3000:]
    return work
