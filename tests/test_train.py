"""End to end on CPU: `tools/dist_train.sh TINY 2` (gloo) runs partition, assembly and training and
writes a checkpoint; `--resume` continues without redoing the stages; the model index records
the run's measured params/FLOPs and `get_model` rebuilds it."""
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(ROOT, 'configs', 'dery', 'tiny_cpu.py')
# short stages and 4 iterations: the point is the plumbing, not the numbers
STAGE_OPTS = ['partitioner.restarts=5', 'proxy.num_batches=1', 'solver.top_m=2', 'assembly.stitch_samples=16',
              'probe.num_samples=16']
TRAIN_OPTS = ['train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
              'param_scheduler.0.T_max=4', 'train_dataloader.batch_size=8', 'val_dataloader.batch_size=32']


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env():
    path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=path, HF_HUB_OFFLINE='1', MPLBACKEND='Agg',
                GLOO_SOCKET_IFNAME=os.environ.get('GLOO_SOCKET_IFNAME', 'lo'))


def _run(cmd, timeout, env=None):
    proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


@pytest.fixture(scope='module')
def dist_run(tmp_path_factory):
    """Two gloo processes: partition + assembly + 4 training iterations."""
    work_dir = str(tmp_path_factory.mktemp('runs') / 'tiny_cpu')
    env = dict(_env(), PORT=str(_free_port()))
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), TINY, '2', '--work-dir', work_dir,
           '--cfg-options', 'train_cfg.max_iters=4', *TRAIN_OPTS, *STAGE_OPTS]
    out = _run(cmd, timeout=170, env=env)
    return work_dir, out


def test_dist_train_two_processes(dist_run):
    work_dir, out = dist_run
    for name in ('partition.json', 'assembly.json', 'assembled_init.pth', 'assembled.py', 'iter_4.pth',
                 'last_checkpoint'):
        assert osp.isfile(osp.join(work_dir, name)), f'{name} missing; log:\n{out[-3000:]}'
    # both ranks took part: the similarity stage ran in 2 processes, training had world size 2
    assert '2 process(es)' in out, out[-3000:]
    assert 'Distributed training: True' in out or "'world_size': 2" in out or 'world_size: 2' in out, out[-3000:]
    ckpt = torch.load(osp.join(work_dir, 'iter_4.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 4
    record = json.load(open(osp.join(work_dir, 'assembly.json')))
    assert sum(v.numel() for v in ckpt['state_dict'].values() if v.dtype.is_floating_point) >= record['params']


def test_resume_does_not_redo_stages(dist_run):
    work_dir, _ = dist_run
    stages = ['partition.json', 'assembly.json', 'assembled_init.pth', 'similarity.npz']
    before = {n: os.stat(osp.join(work_dir, n)).st_mtime_ns for n in stages if osp.exists(osp.join(work_dir, n))}
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), TINY, '--work-dir', work_dir, '--resume',
           '--cfg-options', 'train_cfg.max_iters=6', *TRAIN_OPTS, *STAGE_OPTS]
    out = _run(cmd, timeout=150)
    after = {n: os.stat(osp.join(work_dir, n)).st_mtime_ns for n in before}
    assert after == before, 'a stage output was rewritten on resume'
    assert 'resumed' in out.lower(), out[-3000:]
    assert osp.isfile(osp.join(work_dir, 'iter_6.pth')), out[-3000:]
    ckpt = torch.load(osp.join(work_dir, 'iter_6.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 6
    assert 'resumed epoch: 0, iter: 4' in out, out[-3000:]
    # logged training iterations (logger interval 1): 5 and 6 only, not a restart from 1
    iters = [int(i) for i in re.findall(r'\((?:train)\)\s*(?:\[\d+\])?\[\s*(\d+)/', out)]
    assert iters == [5, 6], iters


def test_model_index_records_the_run(dist_run, tmp_path):
    """tools/model_index_stats.py fills params/FLOPs from the run and nothing else."""
    work_dir, _ = dist_run
    record = json.load(open(osp.join(work_dir, 'assembly.json')))
    meta, readme, index = tmp_path / 'metafile.yml', tmp_path / 'README.md', tmp_path / 'model-index.yml'
    readme.write_text(open(osp.join(ROOT, 'configs', 'dery', 'README.md')).read())
    _run([sys.executable, osp.join(ROOT, 'tools', 'model_index_stats.py'), '--work-dirs', osp.dirname(work_dir),
          '--metafile', str(meta), '--readme', str(readme), '--model-index', str(index)], timeout=120)
    models = {m['Name']: m for m in yaml.safe_load(meta.read_text())['Models']}
    configs = sorted(f[:-3] for f in os.listdir(osp.join(ROOT, 'configs', 'dery')) if f.endswith('.py'))
    assert sorted(models) == configs
    tiny = models['tiny_cpu']['Metadata']
    assert (tiny['Parameters'], tiny['FLOPs']) == (record['params'], record['flops'])
    for name, m in models.items():
        if name != 'tiny_cpu':
            assert 'Parameters' not in m['Metadata'] and 'FLOPs' not in m['Metadata'], name
            for res in m['Results'] or []:  # only the paper's figures, marked as such
                assert all(k.endswith('(paper)') for k in res['Metrics']), name
    row = [line for line in readme.read_text().splitlines() if '(tiny_cpu.py)' in line][0]
    assert f'{record["params"] / 1e6:.2f}' in row


def test_get_model_from_the_run(dist_run):
    from dery.apis.model_index import get_model
    work_dir, _ = dist_run
    record = json.load(open(osp.join(work_dir, 'assembly.json')))
    model = get_model('tiny_cpu', assembly=work_dir)  # random init, reads no weights
    assert sum(p.numel() for p in model.parameters()) == record['params']
    trained = get_model('tiny_cpu', assembly=osp.join(work_dir, 'assembly.json'), pretrained=True)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt = torch.load(f.read().strip(), map_location='cpu', weights_only=False)['state_dict']
    state = trained.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.items() if k in state)
    assert trained(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 4)
    with pytest.raises(FileNotFoundError, match='assembly'):
        get_model('dery-k4-10m-3g_8xb32-ft-20k_cub')
    with pytest.raises(ValueError, match='did you mean'):
        get_model('dery-k4-10m-3g_8xb32-ft-20k_cubb')
