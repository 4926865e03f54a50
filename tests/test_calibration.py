"""Proxy calibration (dery.calibration, dery.apis.calibrate, tools/analysis_tools/proxy_calibration.py).

The statistics against scipy, the sampling of feasible assemblies, the options, and one calibration of
the tiny config end to end: every network is fine-tuned from exactly the weights the proxies scored, the
table's tau/rho are those of the recorded scores and accuracies, and a second call trains nothing.
"""
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, TINY_OPTS

from dery.calibration import (calibration_options, combine, feasible_assemblies, kendall_tau, proxy_configs,
                              rank_agreement, sample_assemblies, spearman_rho)
from dery.calibration.stats import bootstrap_interval
from dery.errors import ConfigError


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize('seed', range(6))
def test_tau_rho_match_scipy_with_ties(seed):
    stats = pytest.importorskip('scipy.stats')
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 15))
    x = rng.integers(0, 5, n).astype(float)       # many ties
    y = x * rng.normal(1, 0.5) + rng.integers(0, 3, n)
    if len(set(x)) > 1 and len(set(y)) > 1:
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    z = rng.normal(size=n)
    assert kendall_tau(z, -z) == pytest.approx(-1.0) and spearman_rho(z, 2 * z + 1) == pytest.approx(1.0)


def test_undefined_correlations_are_nan_not_zero():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))
    assert math.isnan(kendall_tau([1], [2]))
    with pytest.raises(ValueError, match='sizes differ'):
        kendall_tau([1, 2], [1, 2, 3])


def test_bootstrap_interval_seeded_and_brackets_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.7, size=12)
    a = bootstrap_interval(x, y, kendall_tau, num=500, seed=3)
    assert a == bootstrap_interval(x, y, kendall_tau, num=500, seed=3)
    assert a[0] <= kendall_tau(x, y) <= a[1] and -1 <= a[0] < a[1] <= 1
    out = rank_agreement([1.0, None, 3.0, float('nan'), 2.0], [10, 20, 30, 40, 25], num_bootstrap=100)
    assert out['n'] == 3 and out['tau'] == pytest.approx(1.0) and out['rho'] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- sampling
def tiny_problem(params_max=None):
    from dery.solvers import AssemblyProblem, Candidate
    cands = [Candidate(id=f'{m}:{p}', model=m, start=0, end=0, set=p, position=p, params=10 * (k + 1) + p,
                       flops=1) for k, m in enumerate('abc') for p in range(3)]
    return AssemblyProblem(num_positions=3, candidates=cands, constraints=dict(params=(None, params_max)))


def test_sample_assemblies_include_first_distinct_feasible_seeded():
    problem = tiny_problem(params_max=70)
    pool = feasible_assemblies(problem)
    assert pool and all(problem.is_feasible(t) for t in pool) and len(pool) < 27
    include = [pool[3], pool[0], pool[3]]
    out = sample_assemblies(problem, 6, seed=1, include=include)
    assert [ids for ids, _ in out[:2]] == [pool[3], pool[0]] and [s for _, s in out[:2]] == ['include'] * 2
    assert len(out) == min(6, len(pool)) and len({ids for ids, _ in out}) == len(out)
    assert all(problem.is_feasible(ids) for ids, _ in out)
    assert out == sample_assemblies(problem, 6, seed=1, include=include)
    assert sample_assemblies(problem, 100, seed=0) != [] and len(sample_assemblies(problem, 100)) == len(pool)
    with pytest.raises(ConfigError, match='not feasible'):
        sample_assemblies(problem, 3, include=[('c:0', 'c:1', 'c:2')])


def test_sample_assemblies_by_rejection_when_the_space_is_large(monkeypatch):
    import dery.calibration.sampling as sampling
    problem = tiny_problem(params_max=70)
    monkeypatch.setattr(sampling, 'ENUMERATE_LIMIT', 5)
    assert sampling.feasible_assemblies(problem) is None
    out = sampling.sample_assemblies(problem, 4, seed=2)
    assert len(out) == 4 and all(problem.is_feasible(ids) for ids, _ in out)
    assert len({ids for ids, _ in out}) == 4


# ---------------------------------------------------------------------------- options
def test_options_and_proxy_configs():
    from mmengine.config import Config

    from dery.registry import PROXIES
    cfg = Config(dict(proxy=dict(type='NASWOT', num_batches=3, batch_size=8, seed=5, ridge=1e-5),
                      calibration=dict(num_samples=5)))
    opts = calibration_options(cfg, seeds=1)
    assert opts['num_samples'] == 5 and opts['seeds'] == [1] and opts['proxies'] is None
    with pytest.raises(ConfigError, match="no option 'num_sample'.*did you mean num_samples"):
        calibration_options(Config(dict(calibration=dict(num_sample=3))))
    with pytest.raises(ConfigError, match='num_samples must be an integer >= 2'):
        calibration_options(cfg, num_samples=1)
    pcs = proxy_configs(cfg)
    PROXIES.import_from_location()
    assert set(pcs) == set(PROXIES.module_dict)
    assert {'NASWOT', 'SynFlow', 'SNIP', 'GradNorm', 'Jacov', 'Fisher', 'LogME', 'HScore', 'TransRate',
            'GBC'} <= set(pcs)
    assert pcs['NASWOT'] == dict(type='NASWOT', num_batches=3, batch_size=8, seed=5, ridge=1e-5)
    assert pcs['LogME'] == dict(type='LogME', num_batches=3, batch_size=8, seed=5)
    two = proxy_configs(cfg, ['LogME', dict(type='TransRate', normalize=True, label='TransRate-norm')])
    assert two['TransRate-norm'] == dict(type='TransRate', num_batches=3, batch_size=8, seed=5, normalize=True)
    with pytest.raises(ConfigError, match="no proxy 'Nope'"):
        proxy_configs(cfg, ['Nope'])


def test_rescale_schedule():
    from mmengine.config import Config

    from dery.calibration.core import _rescale_schedule
    cfg = Config(dict(train_cfg=dict(by_epoch=False, max_iters=150, val_interval=30),
                      param_scheduler=[dict(type='LinearLR', begin=0, end=10),
                                       dict(type='CosineAnnealingLR', begin=10, end=150, T_max=140)]))
    _rescale_schedule(cfg, 30)
    assert cfg.train_cfg.max_iters == 30 and cfg.train_cfg.val_interval == 30
    assert [(s['begin'], s['end']) for s in cfg.param_scheduler] == [(0, 2), (2, 30)]
    assert cfg.param_scheduler[1]['T_max'] == 28


def test_combine_picks_best_mean_tau():
    def rec(task, taus):
        return dict(task=task, proxies={k: dict(tau=v, tau_ci=[v - .1, v + .1], rho=v, rho_ci=[v, v])
                                        for k, v in taus.items()})
    comb = combine([rec('a', dict(P=0.5, Q=0.6, R=float('nan'))), rec('b', dict(P=0.4, Q=0.2, R=0.9))])
    assert comb['chosen'] == 'P' and [r['proxy'] for r in comb['rows']] == ['P', 'Q', 'R']
    assert comb['rows'][0]['mean'] == pytest.approx(0.45) and comb['rows'][1]['worst'] == pytest.approx(0.2)


# ---------------------------------------------------------------------------- end to end (tiny config)
CALIB = dict(num_samples=3, max_iters=2, num_bootstrap=200, proxies=['NASWOT', 'LogME', 'SynFlow', 'GBC'])


@pytest.fixture(scope='module')
def tiny_calibration(tmp_path_factory, tiny_reference):
    """The calibration of the tiny config, in a copy of the shared tiny run (its partition and assembly
    are reused)."""
    import shutil

    from mmengine.config import Config

    from dery.apis import calibrate
    from dery.calibration.runs import quiet_config_format
    quiet_config_format()
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.merge_from_dict({k: eval(v) if v[0].isdigit() else v for k, v in (o.split('=') for o in TINY_OPTS)})
    work_dir = str(tmp_path_factory.mktemp('calib') / 'work')
    shutil.copytree(tiny_reference, work_dir)
    cfg.work_dir = work_dir
    lines = []
    rec = calibrate(cfg, work_dir, log=lines.append, **CALIB)
    return cfg, work_dir, rec, lines


@pytest.mark.timeout(600)
def test_calibrate_tiny_end_to_end(tiny_calibration):
    cfg, work_dir, rec, lines = tiny_calibration
    out = osp.join(work_dir, 'calibration')
    on_disk = json.loads(open(osp.join(out, 'calibration.json')).read())
    assert on_disk['proxies'].keys() == rec['proxies'].keys() == {'NASWOT', 'LogME', 'SynFlow', 'GBC'}
    assert rec['num_samples'] == 3 and len(rec['samples']) == 3
    asm = json.loads(open(osp.join(work_dir, 'assembly.json')).read())
    ranked = [s for s in rec['samples'] if s['source'] != 'random']
    assert [s['ids'] for s in ranked] == [c['candidate_ids'] for c in asm['candidates']][:len(ranked)]
    assert rec['samples'][0]['source'] == 'solver' and rec['chosen'] == rec['samples'][0]['name']
    # the solver's own proxy score of its answer is the calibration's NASWOT score of it
    assert rec['samples'][0]['scores']['NASWOT'] == pytest.approx(asm['proxy']['score'], rel=1e-9)
    acc = [s['top1_mean'] for s in rec['samples']]
    for label, t in rec['proxies'].items():
        scores = [s['scores'][label] for s in rec['samples']]
        expect = rank_agreement(scores, acc, num_bootstrap=CALIB['num_bootstrap'])
        for k in ('n', 'tau', 'rho'):
            assert t[k] == pytest.approx(expect[k], nan_ok=True), (label, k)
        with open(osp.join(out, f'scatter_{label}.png'), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    md = open(osp.join(out, 'calibration.md')).read()
    assert "Kendall's tau" in md and all(f'| {k} |' in md for k in rec['proxies'])
    for s in rec['samples']:
        run = json.loads(open(osp.join(out, 'runs', f'{s["name"]}_s0', 'run_result.json')).read())
        assert run['top1'] == s['top1'][0] and run['max_iters'] == 2
    assert any('scored by 4 proxies' in line for line in lines)


def test_calibration_fine_tunes_the_scored_network(tiny_calibration):
    """The training config of a sample builds, after init, exactly the network the proxies scored."""
    from mmengine.registry import DefaultScope

    from dery.assembly import Assembly, AssemblyContext
    from dery.calibration import Calibration
    from dery.partition import Partition
    from dery.registry import MODELS
    from dery.zoo import ZooCache
    cfg, work_dir, rec, _ = tiny_calibration
    zoo = ZooCache.from_config(cfg.zoo)
    part = Partition.load(osp.join(work_dir, 'partition.json'))
    calib = Calibration(cfg, work_dir, zoo, part, Assembly.load(osp.join(work_dir, 'assembly.json')),
                        **dict(CALIB, proxies=['SynFlow']))
    calib.prepare()
    assert [s.name for s in calib.samples] == [s['name'] for s in rec['samples']]
    sample = calib.samples[-1]
    ref, _ = AssemblyContext(cfg, zoo, part).build(sample.ids)  # a context of its own, as the stage builds
    tcfg = calib.train_config(sample, 0)
    with DefaultScope.overwrite_default_scope('dery'):
        model = MODELS.build(tcfg.model)
    model.init_weights()
    got, want = model.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for k in want:
        if k.startswith('backbone.'):
            assert torch.equal(got[k], want[k]), k
    # the scores do not depend on the sample's place in the order: this network, built first in a fresh
    # context, scores what the calibration recorded (the gradient proxies read the head: re-initialised)
    from dery.calibration.core import reset_head
    from dery.registry import PROXIES
    reset_head(ref, cfg.proxy.seed)
    synflow = PROXIES.build(calib.proxy_cfgs['SynFlow']).score(ref, calib.ctx.batches)
    assert synflow == pytest.approx(rec['samples'][-1]['scores']['SynFlow'], rel=1e-9)


def test_second_call_reuses_every_run(tiny_calibration, monkeypatch):
    import dery.calibration.runs as runs
    from dery.apis import calibrate
    cfg, work_dir, rec, _ = tiny_calibration

    def no_training(run, *a, **k):
        raise AssertionError(f'{run["name"]} trained again')
    monkeypatch.setattr(runs, 'train_run', no_training)
    again = calibrate(cfg, work_dir, plots=False, **CALIB)
    assert [s['top1'] for s in again['samples']] == [s['top1'] for s in rec['samples']]
    assert {k: v['tau'] for k, v in again['proxies'].items()} == pytest.approx(
        {k: v['tau'] for k, v in rec['proxies'].items()}, nan_ok=True)


def test_tool_reuses_the_runs_and_prints_the_table(tiny_calibration):
    import subprocess
    import sys

    from conftest import TINY_ROOT, tiny_env
    cfg, work_dir, rec, _ = tiny_calibration
    tool = osp.join(TINY_ROOT, 'tools', 'analysis_tools', 'proxy_calibration.py')
    base = [sys.executable, tool, TINY_CONFIG, '--work-dir', work_dir, '--jobs', '1', '--cfg-options', *TINY_OPTS]
    opts = ['--num-samples', '3', '--max-iters', '2', '--proxies', 'NASWOT', 'LogME', 'SynFlow', 'GBC']
    proc = subprocess.run(base + opts, cwd=TINY_ROOT, env=tiny_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "| proxy | Kendall's tau [95% CI] |" in proc.stdout
    again = json.loads(open(osp.join(work_dir, 'calibration', 'calibration.json')).read())
    assert [s['top1'] for s in again['samples']] == [s['top1'] for s in rec['samples']]  # nothing retrained
    bad = subprocess.run(base + ['--num-samples', '1'], cwd=TINY_ROOT, env=tiny_env(), capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and 'error: calibration.num_samples must be an integer >= 2' in bad.stderr
