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
