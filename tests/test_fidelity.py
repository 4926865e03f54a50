"""Paper fidelity (#13): the 'chain' resolution schedule (and the ILP's resolution states), stem and
stitch forms, independent weights of shared nodes, fixed assemblies, MobileNetV3's last node, and
one of the paper's four ImageNet networks rebuilt to its published size."""
import itertools
import os.path as osp
import random

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope

from dery.assembly import AssemblyTables
from dery.assembly.context import build_classifier, check_assembly_options, network_options
from dery.errors import ConfigError
from dery.models import NormActStitch, ReassembledBackbone, StitchLayer, chain_stride, model_complexity
from dery.registry import MODELS, PARTITIONERS
from dery.solvers import AssemblyProblem, Candidate, ExhaustiveSolver, ILPSolver, StateTables
from dery.zoo import TensorSpec, ZooCache

init_default_scope('dery')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'zoo', 'tiny_cpu.py')).zoo
SIZE = (3, 32, 32)
MODEL_CFG = dict(type='ImageClassifier', neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=4, in_channels=8))


@pytest.fixture(scope='module')
def zoo():
    cache = ZooCache.from_config(TINY)
    for name in cache.names:
        cache[name].check_input_size()
    return cache


def _opts(**kw):
    return check_assembly_options(dict(kw))


# ----------------------------------------------------------------------------- 1. 'chain'
def test_chain_stride_rule():
    assert chain_stride((56, 56), (28, 28)) == 2
    assert chain_stride((56, 56), (14, 14)) == 4
    assert chain_stride((28, 28), (28, 28)) == 1
    assert chain_stride((14, 14), (28, 28)) == 1  # smaller: taken as it is
    assert chain_stride((28, 28), (12, 12)) == 1  # not a whole factor


def test_chain_runs_blocks_at_the_delivered_resolution(zoo, monkeypatch):
    # ResNet layer1 (8x8 out) into Swin stages 0-1 (their own input: 16x16, 32 ch): under 'native' the
    # stitch upsamples, under 'chain' Swin runs at 8x8 and nothing is interpolated
    blocks = [dict(model='tiny_resnet', start=0, end=0), dict(model='tiny_swin', start=0, end=3)]
    native = ReassembledBackbone(blocks, zoo=zoo, stitch_init='random')
    assert native.in_specs[1].grid == (16, 16)
    chain = ReassembledBackbone(blocks, zoo=zoo, stitch_init='random', resolution='chain')
    assert chain.in_specs[1].grid == (8, 8) and chain.stitches[0].stride == 1
    assert chain.out_specs[1].grid == (4, 4) and native.out_specs[1].grid == (8, 8)  # one merge: 8 -> 4

    def no_interpolation(*a, **k):
        raise AssertionError('a chain stitch interpolated')
    monkeypatch.setattr(F, 'interpolate', no_interpolation)
    out = chain(torch.randn(2, *SIZE))[-1]
    assert out.shape == (2, chain.out_specs[1].channels, 4, 4)
    # an explicit stride, as in the original's configs
    strided = ReassembledBackbone([blocks[0], dict(blocks[1], stride=2)], zoo=zoo, stitch_init='random',
                                  resolution='chain')
    assert strided.in_specs[1].grid == (4, 4) and strided.stitches[0].proj.kernel_size == (2, 2)
    with pytest.raises(ConfigError, match="only to resolution='chain'"):
        ReassembledBackbone([blocks[0], dict(blocks[1], stride=2)], zoo=zoo)


@pytest.mark.parametrize('opts', [
    dict(resolution='chain'),
    dict(resolution='chain', stem=dict(type='resnet', channels=16), stitch=dict(type='NormActStitch'),
         stitch_consecutive=True),
    dict(resolution='native', stem='resnet', stitch=dict(type='NormActStitch')),
], ids=['chain', 'chain-resnet16-normact-consecutive', 'native-resnet-normact'])
def test_tables_equal_the_built_model(zoo, opts):
    """What the assemble stage asserts: measured params/FLOPs == the solver's tables, here on
    assemblies whose blocks receive other resolutions than their own."""
    opts = _opts(stitch_init='random', **opts)
    nodes = {n: zoo[n].nodes for n in zoo.names}
    part = PARTITIONERS.build(dict(type='UniformPartitioner', num_sets=3)).partition(nodes)
    tables = AssemblyTables(part, zoo, MODEL_CFG, opts)
    problem = tables.problem(None)
    if opts['resolution'] == 'chain':
        assert problem.states is not None
        assert max(len(s) for s in problem.reachable.values()) > 1  # resolution is a real state here
    combos = [ids for ids in itertools.product(*[[c.id for c in cs] for cs in problem.by_position])
              if problem.structure_error(ids) is None]
    picked = random.Random(0).sample(combos, 3)
    picked.append(ILPSolver(top_m=1).solve(problem).best.candidate_ids)
    for ids in picked:
        torch.manual_seed(0)
        model, _ = build_classifier(tables.blocks(ids), zoo, MODEL_CFG, 'random', **network_options(opts))
        assert model_complexity(model, SIZE) == problem.cost(ids), ids
        assert model.eval()(torch.randn(2, *SIZE), mode='tensor').shape == (2, 4)


def _state_problem(seed):
    """A random problem whose costs depend on states (resolutions) walked along the chain."""
    r = random.Random(seed)
    K, n = r.choice([3, 4]), r.choice([3, 4])
    cands = [Candidate(id=f'm{m}.p{p}', model=f'm{m}', start=p, end=p, set=p if r.random() < 0.8 else r.randrange(K),
                       position=p, params=r.randint(1000, 90000), flops=0, score=round(r.uniform(0, 10), 3))
             for p in range(K) for m in range(n)]
    grids = [8, 16, 32]
    first = {c.id: r.choice(grids) for c in cands if c.position == 0}
    block, stitch, head = {}, {}, {}
    for c in cands:
        for g in grids:
            block[(c.id, g)] = (c.params, r.randint(10 ** 5, 10 ** 7) * g // 8)
            if c.position == K - 1:
                head[(c.id, g)] = (r.randint(100, 5000), r.randint(10 ** 3, 10 ** 5) * g)
    for a in cands:
        for b in cands:
            if b.position == a.position + 1:
                for g in grids:
                    stitch[(a.id, g, b.id)] = None if r.random() < 0.1 else (
                        r.randint(0, 20000), r.randint(0, 2 * 10 ** 6) * g, r.choice(grids))
    problem = AssemblyProblem(K, cands, first_stem={cid: (r.randint(100, 5000), r.randint(10 ** 5, 10 ** 7))
                                                     for cid in first},
                              states=StateTables(first=first, block=block, stitch=stitch, head=head))
    while True:
        ids = tuple(r.choice(problem.by_position[p]).id for p in range(K))
        if problem.structure_error(ids) is None:
            break
    params, flops = problem.cost(ids)
    problem.constraints = dict(params=(None, int(params * 1.1)), flops=(None, int(flops * 1.1)))
    problem.validate()
    return problem


@pytest.mark.parametrize('seed', range(8))
def test_ilp_with_states_matches_exhaustive(seed):
    problem = _state_problem(seed)
    exact = ExhaustiveSolver(top_m=None).solve(problem)
    res = ILPSolver(top_m=4).solve(problem)
    assert [a.surrogate for a in res.assemblies] == pytest.approx([a.surrogate for a in exact.ranked[:4]], abs=1e-6)
    for a in res.assemblies:
        assert problem.is_feasible(a.candidate_ids)
        assert (a.params, a.flops) == problem.cost(a.candidate_ids)


# ----------------------------------------------------------------------------- 2. stems
def test_stem_options(zoo):
    blocks = [dict(model='tiny_resnet', start=0, end=1), dict(model='tiny_vit', start=2, end=3)]
    # ResNet layer1 takes 64 channels at 8x8: the default fresh stem (64) feeds it directly
    bb = ReassembledBackbone(blocks, zoo=zoo, stem='resnet', stitch_init='random')
    assert bb.stem_stitch is None and bb.stem[0].out_channels == 64
    bb = ReassembledBackbone(blocks, zoo=zoo, stem=dict(type='resnet', channels=16), stitch_init='random')
    assert isinstance(bb.stem_stitch, StitchLayer) and bb.stem_stitch.c_in == 16  # 16 -> 64: a stitch
    for stem in ('source', dict(type='source')):
        assert ReassembledBackbone(blocks, zoo=zoo, stem=stem, stitch_init='random').stem_type == 'source'
    for bad in ('fresh', dict(type='resnet', channels=0), dict(type='source', channels=3)):
        with pytest.raises(ConfigError):
            ReassembledBackbone(blocks, zoo=zoo, stem=bad)
    assert _opts(stem='resnet')['stem'] == dict(type='resnet', channels=64)


# ----------------------------------------------------------------------------- 3. stitch forms
def test_stitch_forms_registered_and_shaped():
    assert MODELS.get('StitchLayer') is StitchLayer and MODELS.get('NormActStitch') is NormActStitch
    maps = NormActStitch('cnn', (16, 8, 8), 'swin', (4, 4, 24), stride=2)
    assert isinstance(maps.norm, torch.nn.BatchNorm2d) and maps.proj.bias is None
    assert maps.proj.kernel_size == (2, 2) and isinstance(maps.act, torch.nn.LeakyReLU)
    tokens = NormActStitch('swin', (8, 8, 16), 'vit', (65, 24), out_prefix=1, stride=1)
    assert isinstance(tokens.norm, torch.nn.LayerNorm) and isinstance(tokens.proj, torch.nn.Linear)
    assert sum(p.numel() for p in tokens.parameters()) == 2 * 16 + 16 * 24  # LN + Linear, no bias
    assert tokens(torch.randn(2, 8, 8, 16)).shape == (2, 65, 24)
    with pytest.raises(ConfigError, match='not a stitch form'):
        _opts(stitch=dict(type='ReassembledBackbone'))


@pytest.mark.parametrize('src,dst,stride', [
    (TensorSpec('cnn', (12, 8, 8)), TensorSpec('cnn', (10, 4, 4)), 2),
    (TensorSpec('swin', (8, 8, 12)), TensorSpec('vit', (65, 10), 1), 1),
])
def test_normact_lstsq_recovers_a_realisable_stitch(src, dst, stride):
    torch.manual_seed(0)
    teacher = NormActStitch.from_specs(src, dst, init='random', stride=stride)
    with torch.no_grad():
        teacher.norm.weight.uniform_(0.5, 1.5)
        teacher.norm.bias.normal_()
    x = torch.randn((64, ) + src.shape) * 2 + 0.5
    teacher.train()
    with torch.no_grad():
        teacher(x)  # BN statistics of x
    teacher.eval()
    with torch.no_grad():
        y = teacher(x)
    student = NormActStitch.from_specs(src, dst, init='lstsq', stride=stride)
    assert student.fit(x, y) < 1e-2
    affine = StitchLayer.from_specs(src, dst, stride=stride)
    assert affine.fit(x, y) > 5 * student.relative_error(x, y)  # the activation is not affine


def test_chain_fit_aligns_the_probe_resolutions():
    # the source's features are at 16x16 in its own model, the stitch runs at stride 1 in the chain and the
    # target's features are 8x8: the fit resizes the source for itself, the stitch never resamples
    st = StitchLayer('cnn', (6, 8, 8), 'cnn', (5, 8, 8), stride=1)
    x = torch.randn(32, 6, 16, 16)
    w = torch.randn(5, 6)
    y = torch.einsum('oc,bchw->bohw', w, F.interpolate(x, size=(8, 8), mode='bilinear', align_corners=False))
    assert st.fit(x, y) < 1e-3
    assert st(torch.randn(1, 6, 16, 16)).shape == (1, 5, 16, 16)


# ----------------------------------------------------------------------------- 4. weights
def test_shared_nodes_are_copied_and_consecutive_stitch_option(zoo):
    # two overlapping cuts of one model (nodes 1..3 and 2..2) and a consecutive pair (0..0 -> 1..3)
    blocks = [dict(model='tiny_vit', start=0, end=0), dict(model='tiny_vit', start=1, end=3),
              dict(model='tiny_vit', start=2, end=2)]
    bb = ReassembledBackbone(blocks, zoo=zoo, stitch_init='random')
    ptrs = [{p.data_ptr() for p in blk.parameters()} for blk in bb.blocks]
    assert all(not (a & b) for a, b in itertools.combinations(ptrs, 2)), 'blocks share parameter tensors'
    zm = zoo['tiny_vit']
    n_blocks = sum(p.numel() for blk in bb.blocks for p in blk.parameters())
    assert n_blocks == zm.params(0, 0) + zm.params(1, 3) + zm.params(2, 2)
    assert sum(p.numel() for p in bb.parameters()) == sum(
        p.numel() for p in {id(p): p for p in bb.parameters()}.values())
    # the first cut still shares the zoo's weights (built once), the copy does not
    assert ptrs[1] & {p.data_ptr() for p in zm.model.parameters()}
    assert not ptrs[2] & {p.data_ptr() for p in zm.model.parameters()}
    assert isinstance(bb.stitches[0], torch.nn.Identity)
    bb2 = ReassembledBackbone(blocks, zoo=zoo, stitch_init='random', stitch_consecutive=True)
    assert isinstance(bb2.stitches[0], StitchLayer)


# ----------------------------------------------------------------------------- 5. fixed assemblies
def _fixed_cfg():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dery', 'tiny_cpu.py'))
    for key in ('probe', 'similarity', 'partitioner', 'target', 'proxy', 'solver', 'constraints'):
        cfg.pop(key)
    cfg.assembly = dict(blocks=[dict(model='tiny_resnet', start='layer1.0', end='layer2.1'),
                                dict(model='tiny_swin', start='stages.2.blocks.0', end='stages.3.blocks.1',
                                     stride=1)],
                        resolution='chain', stem=dict(type='resnet', channels=64),
                        stitch=dict(type='NormActStitch'), stitch_init='random')
    return cfg


def test_fixed_assembly_built_and_recorded_without_search(tmp_path):
    from dery.apis import assemble, get_model
    from dery.assembly import Assembly
    cfg = _fixed_cfg()
    rec = assemble(cfg, str(tmp_path))  # no probe, partitioner, proxy, solver or target in the config
    assert not osp.exists(tmp_path / 'partition.json')
    assert rec.solver['type'] == 'fixed' and rec.resolution == 'chain'
    assert [b.stride for b in rec.blocks] == [None, 1] and rec.stem_stitch is None
    assert Assembly.load(str(tmp_path / 'assembly.json')).to_json() == rec.to_json()
    assert assemble(cfg, str(tmp_path)).stamp == rec.stamp  # reused
    # get_model builds the same network from the config alone (no assembly.json), random init
    net = get_model(cfg, pretrained=False)
    assert model_complexity(net, SIZE) == (rec.params, rec.flops)
    # and from the work dir's record, with its weights
    net2 = get_model(cfg, pretrained=True, assembly=str(tmp_path))
    assert model_complexity(net2, SIZE) == (rec.params, rec.flops)


def test_fixed_assembly_options_are_checked():
    with pytest.raises(ConfigError, match='unknown keys'):
        _opts(blocks=[dict(model='a', start=0, end=1, set=2)])
    with pytest.raises(ConfigError, match="resolution='chain' only"):
        _opts(blocks=[dict(model='a', start=0, end=1, stride=2)])
    from dery.apis.checks import check_config
    cfg = _fixed_cfg()
    cfg.assembly.blocks[0]['model'] = 'nope'
    with pytest.raises(ConfigError, match="'nope', which is not in the zoo"):
        check_config(cfg, 'assembly')


# ----------------------------------------------------------------------------- 6. MobileNetV3
def test_mobilenetv3_last_conv_block_is_a_node():
    import timm

    from dery.zoo.dissect import find_nodes
    model = timm.create_model('mobilenetv3_small_050', pretrained=False)
    nodes = find_nodes(model)
    assert nodes[-1] == f'blocks.{len(model.blocks) - 1}' and nodes[-2].startswith(f'blocks.{len(model.blocks) - 2}.')
    assert not any(n.startswith('conv_head') for n in nodes)


# ----------------------------------------------------------------------------- the paper
def test_paper_dery_30m_rebuilt_to_its_published_size():
    """DeRy(4,30,6) from its config (random init, no search; the fastest of the four to build):
    24.89M params, 4.47G FLOPs in the paper's counting."""
    from dery.apis import get_model
    from dery.models import complexity_by_part
    from dery.models.complexity import ATTENTION_OPS
    net = get_model(osp.join(ROOT, 'configs', 'dery', 'paper', 'dery-k4-30m-6g_paper_in1k.py'), pretrained=False)
    bb = net.backbone
    assert bb.stem_stitch is None and [s.stride for s in bb.stitches] == [1, 1, 1]
    assert all(isinstance(s, NormActStitch) for s in bb.stitches)
    assert bb.in_specs[2].grid == (14, 14)  # ResNet-50 layer2.2 at the chain's 14x14, as in the original
    # layer2.2 is in blocks 1 and 2: two copies, nothing shared
    ptrs = [{p.data_ptr() for p in blk.parameters()} for blk in bb.blocks]
    assert not ptrs[1] & ptrs[2]
    params = sum(p.numel() for p in net.parameters())
    assert abs(params / 24_893_616 - 1) < 0.002, params
    parts = complexity_by_part(net, (3, 224, 224), ignore_ops=ATTENTION_OPS)
    flops = sum(parts[k][1] for k in ('stem', 'blocks', 'stitches', 'neck'))
    assert abs(flops / 4.47e9 - 1) < 0.02, flops


def test_mae_zoo_model_sees_every_token():
    """mmpretrain's MAEViT masks 75% of the tokens at random in forward(x); as a zoo model it runs unmasked
    (the similarity, the stitches and the FLOPs see the network reassembled networks run)."""
    init_default_scope('dery')
    zoo = ZooCache([dict(name='mae', adapter='mmpretrain', family='vit', input_size=[3, 32, 32],
                         model=dict(type='MAEViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                                             feedforward_channels=64),
                                    img_size=32, patch_size=8))], pretrained=False, input_size=(3, 32, 32))
    zm = zoo['mae']
    x = torch.randn(2, 3, 32, 32)
    a, b = zm.node_outputs(x), zm.node_outputs(x)
    assert all(v.shape[1] == 17 for v in a.values())  # 16 patches + the class token
    assert all(torch.equal(a[k], b[k]) for k in a)      # no random masking
    assert zm.shapes(-1)[1] == (17, 32)
