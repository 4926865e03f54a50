"""Tests of the partitioners (dery.partition): constraints, optimality, determinism, errors.

The objective and block similarity are recomputed here from the raw similarity dict,
independently of the library code, and the vectorised solver is checked move for move
against the plain-Python reference in benchmarks/reference_partition.py.
"""
import importlib.util
import itertools
import json
import math
import os.path as osp

import numpy as np
import pytest

from dery.partition import (CoverSetPartitioner, RandomPartitioner, UniformPartitioner,
                            Partition, evaluate_partition, initial_starts, size_limits)
from dery.registry import PARTITIONERS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _reference():
    spec = importlib.util.spec_from_file_location(
        'reference_partition', osp.join(ROOT, 'benchmarks', 'reference_partition.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_partition


# ----------------------------------------------------------------------------- helpers
def random_instance(seed, num_models=5, min_nodes=4, max_nodes=14, both_orders=True):
    """CKA-like similarities: smooth in the nodes' relative depth, plus noise."""
    rng = np.random.default_rng(seed)
    nodes, depth = {}, {}
    for m in range(num_models):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        nodes[f'net{m}'] = [f'net{m}.block{i}' for i in range(n)]
        depth[f'net{m}'] = np.sort(rng.random(n)) * 0.4 + np.linspace(0, 0.6, n)
    names = list(nodes)
    sim = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            d = depth[a][:, None] - depth[b][None, :]
            s = np.clip(0.3 + 0.65 * np.exp(-d ** 2 / 0.03) + rng.normal(0, 0.05, d.shape),
                        0, 1)
            sim[(a, b)] = s
            if both_orders or a == b:
                sim[(b, a)] = s.T
    return nodes, sim


def block_sim(sim, a, s, e, b, s2, e2):
    """S(a[s:e], b[s2:e2]) straight from the definition (design.md / base.py)."""
    out = sim[(a, b)][e, e2] if (a, b) in sim else sim[(b, a)][e2, e]
    if s == 0 and s2 == 0:
        inp = 1.0
    elif s == 0 or s2 == 0:
        inp = 0.0
    else:
        inp = sim[(a, b)][s - 1, s2 - 1] if (a, b) in sim else sim[(b, a)][s2 - 1, s - 1]
    return float(out + inp)


def spans(result):
    """model -> list of (start, end) node indices, recomputed from node names."""
    out = {}
    for name, entry in result['models'].items():
        idx = {n: i for i, n in enumerate(entry['nodes'])}
        out[name] = [(idx[b['start']], idx[b['end']]) for b in entry['blocks']]
    return out


def member_scores(result, sim):
    """Per set: {member model: summed S(other member, it)}."""
    sp = spans(result)
    scores = []
    for st in result['sets']:
        members = [(m, k) for m, k in st['members']]
        sc = {}
        for i, ki in members:
            sc[i] = sum(block_sim(sim, j, *sp[j][kj], i, *sp[i][ki])
                        for j, kj in members if j != i)
        scores.append(sc)
    return scores


def objective(result, sim):
    return sum(sc[st['anchor'][0]] for st, sc in zip(result['sets'], member_scores(result, sim)))


def node_limit(n, K, eps):
    return max(math.ceil(n / K), math.floor((1 + eps) * n / K + 1e-9))


def assert_plain_json(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str
            assert_plain_json(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain_json(v)
    else:
        assert obj is None or type(obj) in (str, int, float, bool), type(obj)


def check_result(result, nodes, sim, K, eps):
    """All structural constraints, the objective and the anchor rule."""
    limits = {m: node_limit(len(v), K, eps) for m, v in nodes.items()}
    Partition.from_json(result).validate(nodes, limits)           # contiguity, cover, one block per set
    assert result['num_sets'] == K
    sp = spans(result)
    for m, blocks in sp.items():
        assert blocks[0][0] == 0 and blocks[-1][1] == len(nodes[m]) - 1
        for (_, e0), (s1, _) in zip(blocks, blocks[1:]):
            assert s1 == e0 + 1
        assert all(e - s + 1 <= limits[m] for s, e in blocks)
        assert sorted(b['set'] for b in result['models'][m]['blocks']) == list(range(K))
    for st in result['sets']:                       # each set: exactly one block per model
        assert sorted(m for m, _ in st['members']) == sorted(nodes)
    assert result['objective'] == pytest.approx(objective(result, sim), rel=1e-9, abs=1e-9)
    for st, sc in zip(result['sets'], member_scores(result, sim)):
        assert sc[st['anchor'][0]] >= max(sc.values()) - 1e-9     # the anchor is the best
    # sets ordered by the mean relative depth of their members
    depth = [np.mean([(sp[m][k][0] + sp[m][k][1] + 1) / (2 * len(nodes[m]))
                      for m, k in st['members']]) for st in result['sets']]
    assert all(d0 <= d1 for d0, d1 in zip(depth, depth[1:]))
    assert_plain_json(result)
    json.dumps(result)


# ----------------------------------------------------------------------------- registry
def test_registered_and_built_from_config():
    for name in ('CoverSetPartitioner', 'UniformPartitioner', 'RandomPartitioner'):
        assert PARTITIONERS.get(name) is not None
    part = PARTITIONERS.build(dict(type='CoverSetPartitioner', num_sets=3, restarts=5))
    assert isinstance(part, CoverSetPartitioner) and part.num_sets == 3
    nodes, sim = random_instance(0, num_models=3)
    result = part.partition(nodes, sim).to_json()
    assert result['type'] == 'CoverSetPartitioner' and result['num_sets'] == 3
    for key in ('similarity', 'seed', 'objective', 'models', 'sets'):
        assert key in result


# ----------------------------------------------------------------------------- constraints
@pytest.mark.parametrize('seed', range(8))
def test_constraints_on_random_instances(seed):
    rng = np.random.default_rng(100 + seed)
    K = int(rng.integers(1, 6))
    eps = float(rng.choice([0.0, 0.2, 0.5]))
    assignment = ('free', 'stage')[seed % 2]
    nodes, sim = random_instance(seed, num_models=int(rng.integers(2, 7)), min_nodes=K,
                                 max_nodes=15)
    result = CoverSetPartitioner(num_sets=K, eps=eps, restarts=15, seed=seed,
                                 assignment=assignment).partition(nodes, sim).to_json()
    check_result(result, nodes, sim, K, eps)
    if assignment == 'stage':
        for entry in result['models'].values():
            assert [b['set'] for b in entry['blocks']] == list(range(K))
    assert len(result['history']['restart_objectives']) == 15
    assert result['objective'] == pytest.approx(max(result['history']['restart_objectives']),
                                                rel=1e-9)


def test_more_sets_than_brute_force_limit_uses_linear_assignment():
    nodes, sim = random_instance(3, num_models=3, min_nodes=8, max_nodes=12)
    result = CoverSetPartitioner(num_sets=7, eps=0.5, restarts=4, seed=1).partition(nodes, sim).to_json()
    check_result(result, nodes, sim, 7, 0.5)


def test_size_limit_rule():
    nodes = {'a': [f'a{i}' for i in range(9)], 'b': [f'b{i}' for i in range(16)],
             'c': [f'c{i}' for i in range(33)]}
    limits, feasible = size_limits(nodes, 4, 0.2)
    # (1+eps)N/K = 2.7 would make 9 nodes uncuttable: the limit is raised to ceil(9/4)
    assert limits == [3, 4, 9]
    assert feasible[1][0, 4] and not feasible[1][0, 5] and not feasible[1][3, 3]


def test_params_size_limit():
    rng = np.random.default_rng(7)
    nodes, sim = random_instance(7, num_models=4, min_nodes=8, max_nodes=14)
    params = {m: [float(v) for v in rng.lognormal(10, 0.6, len(v))] for m, v in nodes.items()}
    eps = 0.5
    result = CoverSetPartitioner(num_sets=3, eps=eps, restarts=10, size_limit='params',
                                 seed=0).partition(nodes, sim, node_params=params).to_json()
    Partition.from_json(result).validate(nodes)
    for m, blocks in spans(result).items():
        limit = (1 + eps) * sum(params[m]) / 3
        for blk, (s, e) in zip(result['models'][m]['blocks'], blocks):
            assert sum(params[m][s:e + 1]) <= limit * (1 + 1e-9)
            assert blk['params'] == pytest.approx(sum(params[m][s:e + 1]), rel=1e-9)
    assert result['size_limit'] == 'params'
    with pytest.raises(ValueError, match='node_params'):
        CoverSetPartitioner(num_sets=3, size_limit='params').partition(nodes, sim).to_json()
    heavy = {m: [1.0] * len(v) for m, v in nodes.items()}
    heavy['net2'][0] = 1e6                      # one node alone is over (1+eps) * P / K
    with pytest.raises(ValueError, match="infeasible for model 'net2'"):
        CoverSetPartitioner(num_sets=3, size_limit='params').partition(nodes, sim,
                                                                      node_params=heavy).to_json()


# ----------------------------------------------------------------------------- optimality
@pytest.mark.parametrize('seed', range(4))
def test_matches_plain_python_reference(seed):
    """refine=0 is the paper's loop: same decisions as the reference, restart by restart."""
    rng = np.random.default_rng(seed)
    K = int(rng.integers(2, 5))
    eps = (0.2, 0.5)[seed % 2]
    assignment = ('free', 'stage')[seed // 2 % 2]
    nodes, sim = random_instance(seed, num_models=int(rng.integers(3, 7)), min_nodes=K + 1,
                                 max_nodes=16)
    R = 12
    result = CoverSetPartitioner(num_sets=K, eps=eps, restarts=R, seed=seed, refine=0,
                                 assignment=assignment).partition(nodes, sim).to_json()
    ref = _reference()(nodes, sim, K, eps, R, seed=seed, assignment=assignment)
    assert result['history']['restart_objectives'] == pytest.approx(ref['restart_objectives'],
                                                                  rel=1e-9)
    assert result['best_restart'] == ref['best_restart']
    for m, name in enumerate(nodes):
        assert [s for s, _ in spans(result)[name]] == ref['starts'][m]
    # same grouping of blocks into sets (the set ids themselves are renumbered by depth)
    ours = {frozenset(map(tuple, st['members'])) for st in result['sets']}
    theirs = {frozenset((name, ref['blockset'][m].index(t)) for m, name in enumerate(nodes))
              for t in range(K)}
    assert ours == theirs


@pytest.mark.parametrize('seed', range(3))
def test_refine_never_lowers_the_objective(seed):
    nodes, sim = random_instance(20 + seed, num_models=6, min_nodes=6, max_nodes=18)
    plain = CoverSetPartitioner(num_sets=4, restarts=10, seed=seed, refine=0).partition(nodes,
                                                                                       sim).to_json()
    refined = CoverSetPartitioner(num_sets=4, restarts=10, seed=seed, refine=3).partition(
        nodes, sim).to_json()
    check_result(refined, nodes, sim, 4, 0.2)
    assert refined['objective'] >= plain['objective'] - 1e-9


def _brute_force_optimum(nodes, sim, K, eps):
    """Global optimum by enumeration: every cut of every model, every assignment."""
    names = list(nodes)
    options = []
    for m in names:
        n, lim = len(nodes[m]), node_limit(len(nodes[m]), K, eps)
        opts = []
        for cuts in itertools.combinations(range(1, n), K - 1):
            b = (0,) + cuts + (n,)
            if all(1 <= b[k + 1] - b[k] <= lim for k in range(K)):
                blocks = [(b[k], b[k + 1] - 1) for k in range(K)]
                perms = [tuple(range(K))] if m == names[0] else itertools.permutations(range(K))
                for perm in perms:           # set of block k (model 0 fixes the labels)
                    opts.append([blocks[perm.index(t)] for t in range(K)])   # block per set
        options.append(opts)
    best = -math.inf
    for combo in itertools.product(*options):
        total = 0.0
        for t in range(K):
            total += max(sum(block_sim(sim, names[j], *combo[j][t], names[i], *combo[i][t])
                             for j in range(len(names)) if j != i)
                         for i in range(len(names)))
        best = max(best, total)
    return best


@pytest.mark.parametrize('seed,K', [(0, 2), (1, 3), (2, 3)])
def test_reaches_global_optimum_on_tiny_instances(seed, K):
    nodes, sim = random_instance(40 + seed, num_models=3, min_nodes=K + 1, max_nodes=6)
    best = _brute_force_optimum(nodes, sim, K, 0.2)
    result = CoverSetPartitioner(num_sets=K, restarts=30, seed=seed).partition(nodes, sim).to_json()
    assert objective(result, sim) == pytest.approx(best, rel=1e-9)


def planted_instance(num_models=6, K=4, seed=0, permuted=(4, 5)):
    """Similarities built so that a known partition is the unique optimum.

    Every model has K blocks of 2-4 nodes; block k carries the function ("type") k, except
    in the ``permuted`` models, whose blocks 1 and 2 carry types 2 and 1. The node
    similarity of two models is 1 exactly at the matching pairs -- the last nodes of two
    blocks of the same type (output term), and the nodes before them (input term) -- and
    decays below 0.6 away from them. So grouping the blocks by type gives every member
    S = 2 with its anchor, the largest value possible: objective 2 K (M - 1), reached
    only by the planted cuts and grouping. The permuted models need the free
    assignment: their block 1 belongs to the set of the other models' block 2.
    """
    rng = np.random.default_rng(seed)
    names = [f'm{i}' for i in range(num_models)]
    sizes, types, nodes, end_of, pred_of = {}, {}, {}, {}, {}
    for i, name in enumerate(names):
        sizes[name] = [int(v) for v in rng.integers(2, 5, size=K)]
        order = list(range(K))
        if i in permuted:
            order[1], order[2] = order[2], order[1]
        types[name] = order
        nodes[name] = [f'{name}.n{j}' for j in range(sum(sizes[name]))]
        ends = np.cumsum(sizes[name]) - 1
        end_of[name] = {order[k]: int(ends[k]) for k in range(K)}
        pred_of[name] = {order[k]: (int(ends[k - 1]) if k else None) for k in range(K)}
    sim = {}
    for a in names:
        for b in names:
            match = [(end_of[a][t], end_of[b][t]) for t in range(K)]
            match += [(pred_of[a][t], pred_of[b][t]) for t in range(K)
                      if pred_of[a][t] is not None and pred_of[b][t] is not None]
            i = np.arange(len(nodes[a]))[:, None]
            j = np.arange(len(nodes[b]))[None, :]
            s = np.zeros((len(nodes[a]), len(nodes[b])))
            for p, q in match:
                d = np.abs(i - p) + np.abs(j - q)
                s = np.maximum(s, np.where(d == 0, 1.0, 0.6 * 0.75 ** (d - 1)))
            sim[(a, b)] = s
    return nodes, sim, sizes, types


@pytest.mark.parametrize('seed', range(3))
def test_planted_partition_is_recovered(seed):
    nodes, sim, sizes, types = planted_instance(seed=seed)
    K, M = 4, len(nodes)
    result = CoverSetPartitioner(num_sets=K, eps=1.0, restarts=50, seed=seed).partition(
        nodes, sim).to_json()
    check_result(result, nodes, sim, K, 1.0)
    assert result['objective'] == pytest.approx(2 * K * (M - 1))
    # expected set ids: types ordered by the mean relative depth of their blocks
    depth = {}
    for m in nodes:
        start = np.concatenate([[0], np.cumsum(sizes[m])[:-1]])
        for k in range(K):
            mid = (2 * start[k] + sizes[m][k]) / (2 * len(nodes[m]))
            depth.setdefault(types[m][k], []).append(mid)
    set_of_type = {t: i for i, t in enumerate(sorted(range(K), key=lambda t: np.mean(depth[t])))}
    for m in nodes:
        blocks = result['models'][m]['blocks']
        assert [b['num_nodes'] for b in blocks] == sizes[m]
        assert [b['set'] for b in blocks] == [set_of_type[t] for t in types[m]]
    # the free assignment is exercised: in the permuted models block k is not in set k
    assert [b['set'] for b in result['models']['m4']['blocks']] == [0, 2, 1, 3]
    # ... and needed: with block k forced into set k the optimum is out of reach
    stage = CoverSetPartitioner(num_sets=K, eps=1.0, restarts=50, seed=seed,
                                assignment='stage').partition(nodes, sim).to_json()
    assert stage['objective'] < result['objective'] - 0.5


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_json():
    nodes, sim = random_instance(11, num_models=6)
    cfg = dict(type='CoverSetPartitioner', restarts=20, seed=5)
    a = json.dumps(PARTITIONERS.build(cfg).partition(nodes, sim).to_json())
    b = json.dumps(PARTITIONERS.build(cfg).partition(nodes, sim).to_json())
    assert a == b
    c = PARTITIONERS.build(dict(cfg, seed=6)).partition(nodes, sim).to_json()
    assert c['seed'] == 6 and json.loads(a)['seed'] == 5
    # the seed drives the initial cuts
    assert not np.array_equal(initial_starts(nodes, 4, 20, 5), initial_starts(nodes, 4, 20, 6))
    for cls in (RandomPartitioner, UniformPartitioner):
        assert (json.dumps(cls(seed=3).partition(nodes, sim).to_json())
                == json.dumps(cls(seed=3).partition(nodes, sim).to_json()))


def test_one_order_per_pair_and_plain_lists_are_enough():
    nodes, sim = random_instance(12, num_models=4)
    names = list(nodes)
    upper = {(a, b): sim[(a, b)].tolist() for i, a in enumerate(names) for b in names[i + 1:]}
    part = CoverSetPartitioner(restarts=8, seed=2)
    assert json.dumps(part.partition(nodes, upper).to_json()) == json.dumps(part.partition(nodes, sim).to_json())


def test_metadata_and_timing():
    nodes, sim = random_instance(13, num_models=3)
    part = CoverSetPartitioner(restarts=3, similarity_type='cka', record_time=True,
                               progress=True)
    result = part.partition(nodes, sim).to_json()
    assert result['similarity'] == 'cka' and result['seconds'] >= 0
    assert part.partition(nodes, sim, similarity_type='linear_cka').to_json()['similarity'] == \
        'linear_cka'
    assert 'seconds' not in CoverSetPartitioner(restarts=3).partition(nodes, sim).to_json()
    assert CoverSetPartitioner(restarts=3).partition(nodes, sim).to_json()['similarity'] == 'unknown'
    for key in ('eps', 'restarts', 'size_limit', 'assignment', 'size_limits', 'history'):
        assert key in result


def test_block_similarity_and_objective_by_hand():
    """Two models of 3 nodes, K = 2: the objective written out term by term."""
    nodes = {'p': ['p0', 'p1', 'p2'], 'q': ['q0', 'q1', 'q2']}
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.1, 0.5, 0.7]])
    sim = {('p', 'q'): s, ('q', 'p'): s.T}
    result = UniformPartitioner(num_sets=2).partition(nodes, sim).to_json()    # blocks [0,1], [2]
    assert [(b['start'], b['end']) for b in result['models']['p']['blocks']] == \
        [('p0', 'p1'), ('p2', 'p2')]
    # set 0: out s[1,1] = 0.8 + two raw inputs 1.0; set 1: out s[2,2] = 0.7 + in s[1,1] = 0.8
    assert result['objective'] == pytest.approx(0.8 + 1.0 + 0.7 + 0.8)
    assert evaluate_partition(result, sim) == pytest.approx(0.8 + 1.0 + 0.7 + 0.8)
    # a raw input against a feature map counts 0: cut p after p0 and q after q1
    result['models']['p']['blocks'] = [
        {'start': 'p0', 'end': 'p0', 'set': 0}, {'start': 'p1', 'end': 'p2', 'set': 1}]
    result['models']['q']['blocks'] = [
        {'start': 'q0', 'end': 'q1', 'set': 0}, {'start': 'q2', 'end': 'q2', 'set': 1}]
    # set 0: s[0,1] + 1.0 ; set 1: s[2,2] + s[0,1]
    assert evaluate_partition(result, sim) == pytest.approx(0.2 + 1.0 + 0.7 + 0.2)


# ----------------------------------------------------------------------------- baselines
def test_baselines():
    nodes, sim = random_instance(14, num_models=5, min_nodes=5, max_nodes=17)
    uni = UniformPartitioner(num_sets=4).partition(nodes, sim).to_json()
    Partition.from_json(uni).validate(nodes)
    for m, blocks in spans(uni).items():
        sizes = [e - s + 1 for s, e in blocks]
        assert max(sizes) - min(sizes) <= 1
        assert [b['set'] for b in uni['models'][m]['blocks']] == [0, 1, 2, 3]
    assert uni['objective'] == pytest.approx(objective(uni, sim), rel=1e-9)
    rnd = RandomPartitioner(num_sets=4, eps=0.2, seed=1).partition(nodes, sim).to_json()
    check_result(rnd, nodes, sim, 4, 0.2)
    other = RandomPartitioner(num_sets=4, eps=0.2, seed=2).partition(nodes, sim).to_json()
    assert spans(other) != spans(rnd)
    free = RandomPartitioner(num_sets=4, eps=None, seed=1).partition(nodes, None).to_json()
    Partition.from_json(free).validate(nodes)
    assert free['objective'] is None
    assert all(st['anchor'][0] == 'net0' for st in free['sets'])
    best = CoverSetPartitioner(num_sets=4, restarts=20).partition(nodes, sim).to_json()
    assert best['objective'] > max(uni['objective'], rnd['objective'])
    # a baseline's partition scored with its best anchors
    assert evaluate_partition(free, sim, repick_anchors=True) >= \
        evaluate_partition(free, sim) - 1e-9


# ----------------------------------------------------------------------------- errors
def _bad(nodes, sim, **kw):
    part_kw = {k: kw.pop(k) for k in list(kw) if k in ('num_sets', 'eps')}
    return lambda: CoverSetPartitioner(restarts=2, **part_kw).partition(nodes, sim, **kw).to_json()


def _errors():
    nodes, sim = random_instance(15, num_models=3, min_nodes=5, max_nodes=8)
    missing = {k: v for k, v in sim.items() if set(k) != {'net0', 'net2'}}
    wrong = dict(sim)
    wrong[('net0', 'net1')] = np.zeros((2, 2))
    nan = dict(sim)
    nan[('net1', 'net2')] = sim[('net1', 'net2')].copy()
    nan[('net1', 'net2')][0, 0] = np.nan
    nan[('net2', 'net1')] = nan[('net1', 'net2')].T
    n0 = len(nodes['net0'])
    return [
        (_bad(nodes, sim, num_sets=0), 'num_sets must be >= 1'),
        (_bad(nodes, sim, num_sets=9), rf"num_sets=9 exceeds the \d+ nodes of model 'net"),
        (_bad(nodes, sim, eps=-0.1), 'eps must be >= 0'),
        (_bad(nodes, missing), r"missing the pair \('net0', 'net2'\)"),
        (_bad(nodes, wrong), rf"similarity\[\('net0', 'net1'\)\] has shape \(2, 2\), "
                             rf"expected \({n0}, {len(nodes['net1'])}\)"),
        (_bad(nodes, nan), r"similarity\[\('net1', 'net2'\)\] contains NaN"),
        (_bad({'a': []}, {}), "model 'a' has no nodes"),
        (_bad({'a': ['x', 'x']}, {}), "lists node 'x' more than once"),
        (_bad(nodes, None), 'similarity is required'),
        (lambda: CoverSetPartitioner(restarts=0), 'restarts must be an integer >= 1'),
        (lambda: CoverSetPartitioner(assignment='greedy'), "assignment must be 'free'"),
        (lambda: CoverSetPartitioner(size_limit='flops'), "size_limit must be 'nodes'"),
    ]


@pytest.mark.parametrize('case', range(len(_errors())))
def test_clear_errors(case):
    fn, match = _errors()[case]
    with pytest.raises(ValueError, match=match):
        fn()
