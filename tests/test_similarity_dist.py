"""Two CPU processes (torchrun, gloo) give the single-process similarity."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from dist_similarity_worker import build_tiny_zoo, run_both  # noqa: E402


def _torchrun():
    exe = osp.join(osp.dirname(sys.executable), 'torchrun')
    return [exe] if osp.exists(exe) else [sys.executable, '-m', 'torch.distributed.run']


@pytest.mark.timeout(180)
def test_two_process_gloo_equals_single_process(tmp_path):
    out = tmp_path / 'dist.npz'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    if sys.platform.startswith('linux'):  # keep gloo on the loopback device
        env.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    cmd = _torchrun() + ['--standalone', '--nproc_per_node', '2',
                         osp.join(HERE, 'dist_similarity_worker.py'), str(out), str(tmp_path / 'dist')]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dist = np.load(out)
    assert int(dist['linear_world']) == 2 and int(dist['minibatch_world']) == 2

    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_both(build_tiny_zoo(), str(tmp_path / 'single'))
    finally:
        torch.set_num_threads(threads)
    for tag in ('linear', 'minibatch'):
        assert dist[tag].shape == single[tag].shape
        np.testing.assert_allclose(dist[tag], single[tag], atol=1e-6, err_msg=tag)
    # the distributed run wrote the same outputs a single process writes
    assert osp.exists(tmp_path / 'dist' / 'linear' / 'similarity.npz')
    shutil.rmtree(tmp_path / 'dist', ignore_errors=True)
