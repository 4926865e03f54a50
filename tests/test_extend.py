"""Extending DeRy from outside the package: projects/example registers a similarity metric and a
solver, and tools/partition.py + tools/assemble.py use them through the config's custom_imports."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dery.registry import SIMILARITIES, SOLVERS  # noqa: E402
from dery.solvers import AssemblyProblem, Candidate, ExhaustiveSolver  # noqa: E402

CONFIG = osp.join(ROOT, 'projects', 'example', 'configs', 'tiny_rsa_beam.py')


def test_custom_imports_register_the_example_types():
    from mmengine.config import Config
    Config.fromfile(CONFIG)  # imports projects.example.* (custom_imports)
    assert SIMILARITIES.get('RSASimilarity') is not None and SOLVERS.get('BeamSolver') is not None
    assert 'projects.example.rsa_similarity' in sys.modules


def test_rsa_similarity_properties():
    import projects.example  # noqa: F401
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=g)
    b = a @ torch.randn(8, 16, generator=g)          # a linear map of a
    c = torch.randn(40, 3, 4, generator=g)           # unrelated, any trailing shape
    m = SIMILARITIES.build(dict(type='RSASimilarity'))
    m.update([a[:20], b[:20], c[:20]])
    m.update([a[20:], b[20:], c[20:]])               # batches accumulate
    s = m.compute()
    assert s.shape == (3, 3) and torch.allclose(s, s.T)
    assert torch.allclose(s.diagonal(), torch.ones(3, dtype=s.dtype))
    assert s[0, 1] > s[0, 2] and s[0, 1] > 0.3 and abs(float(s[0, 2])) < 0.3
    m.reset()
    m.update([3.0 * a], [a, c])                      # scale invariance, rectangular form
    s2 = m.compute()
    assert s2.shape == (1, 2) and s2[0, 0] == pytest.approx(1.0)
    m.reset()
    m.update([a, torch.ones(40, 5)])                 # a constant node is similar to nothing
    assert torch.equal(m.compute()[1], torch.zeros(2, dtype=s.dtype))
    assert SIMILARITIES.build(dict(type='RSASimilarity', kind='spearman')).settings()['kind'] == 'spearman'


def _problem(budget):
    cands = []
    for p in range(3):
        for j, (params, score) in enumerate([(10, 3.0), (5, 2.0), (1, 0.5)]):
            cands.append(Candidate(id=f'{p}:{j}', model=f'm{j}', start=p, end=p, set=(p + j) % 3, position=p,
                                   params=params + p, flops=params, score=score - 0.1 * p * j))
    return AssemblyProblem(num_positions=3, candidates=cands, constraints=dict(params=(None, budget)))


@pytest.mark.parametrize('budget', [100, 25, 12])
def test_beam_solver_finds_the_surrogate_optimum(budget):
    import projects.example  # noqa: F401
    problem = _problem(budget)
    beam = SOLVERS.build(dict(type='BeamSolver', beam_width=27, top_m=3)).solve(problem)
    exact = ExhaustiveSolver().solve(problem)
    assert all(problem.is_feasible(a.candidate_ids) for a in beam.assemblies)
    assert beam.best.surrogate == pytest.approx(exact.best.surrogate)
    calls = []
    scored = SOLVERS.build(dict(type='BeamSolver', beam_width=4, top_m=2)).solve(
        problem, score_fn=lambda ids: calls.append(ids) or -len(calls))
    assert scored.num_proxy_evals == len(calls) <= 2 and scored.best.proxy_score == -1
    with pytest.raises(ValueError, match='budget|params'):
        SOLVERS.build(dict(type='BeamSolver')).solve(_problem(2))


def _run(args, timeout):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', MPLBACKEND='Agg',
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args} failed:\n{out[-5000:]}'
    return out


def test_partition_and_assemble_tools_use_the_example(tmp_path):
    work_dir = str(tmp_path / 'tiny_rsa_beam')
    opts = ['--cfg-options', 'partitioner.restarts=5', 'proxy.num_batches=1', 'assembly.stitch_samples=16',
            'probe.num_samples=16']
    _run([osp.join(ROOT, 'tools', 'partition.py'), CONFIG, '--work-dir', work_dir, *opts], timeout=150)
    part = json.load(open(osp.join(work_dir, 'partition.json')))
    assert part['similarity'] == 'RSASimilarity'
    assert all(len(m['blocks']) == 3 for m in part['models'].values())
    mtime = os.stat(osp.join(work_dir, 'partition.json')).st_mtime_ns
    _run([osp.join(ROOT, 'tools', 'assemble.py'), CONFIG, '--work-dir', work_dir, *opts], timeout=150)
    assert os.stat(osp.join(work_dir, 'partition.json')).st_mtime_ns == mtime  # read, not redone
    record = json.load(open(osp.join(work_dir, 'assembly.json')))
    assert record['solver']['type'] == 'BeamSolver' and record['solver']['info']['beam_width'] == 8
    assert 0 < record['solver']['num_proxy_evals'] <= 3
    assert record['params'] <= 1_500_000 and record['flops'] <= 40_000_000
    assert osp.isfile(osp.join(work_dir, 'assembled_init.pth'))
