"""The zoo at scale (#16): the similarity stage holds one model at a time, shards models over ranks.

* peak memory of ``compute_similarity`` over a :class:`~dery.zoo.ZooCache` does not grow with the
  number of models (live heap bytes, glibc ``mallinfo2``, sampled every millisecond);
* ``torchrun --nproc_per_node 2``: each rank builds a disjoint share of the zoo, and the result is
  bit-identical to one process;
* the pieces: stored probe batches, Gram-matrix streaming equals feature streaming, the work
  queue, the thread count rule.
"""
import ctypes
import json
import os
import os.path as osp
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)

# 4 random-init ResNet-18s (11.2M parameters, 45 MB of weights each) at 16 x 16: the weights dominate
# the memory, the forward passes cost nothing
ZOO = [dict(name=f'r18_{k}', adapter='timm', model='resnet18', family='cnn', input_size=[3, 16, 16])
       for k in range(4)]
PROBE = dict(dataset=dict(type='SyntheticImageDataset', num_samples=40, num_classes=4, image_size=16,
                          pipeline=[dict(type='PackInputs')]), batch_size=8, num_samples=40, seed=0)
QUIET = dict(plot=False, progress=False)
WEIGHTS = 11_689_512 * 4  # bytes of one model's parameters (ResNet-18 with its head)


def _zoo(n):
    from dery.zoo import ZooCache
    return ZooCache(ZOO[:n], pretrained=False, input_size=(3, 16, 16))


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                               'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def _heap():
    try:
        fn = ctypes.CDLL('libc.so.6').mallinfo2
    except (OSError, AttributeError):
        pytest.skip('needs glibc >= 2.33 (mallinfo2)')
    fn.restype = _MallInfo2
    return lambda: (lambda m: m.uordblks + m.hblkhd)(fn())


def _peak_heap(fn):
    """``fn()``'s peak live heap bytes above the start (sampled every millisecond)."""
    heap = _heap()
    import gc
    gc.collect()
    base = heap()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], heap())
            stop.wait(0.001)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    peak[0] = max(peak[0], heap())
    return peak[0] - base, out


def test_similarity_memory_does_not_grow_with_the_zoo(tmp_path):
    from dery.similarity import compute_similarity
    # warm-up: imports, registries, the first model's one-off allocations
    compute_similarity(_zoo(1), PROBE, dict(type='LinearCKA', **QUIET), str(tmp_path / 'warm'))
    peaks, results = {}, {}
    for n in (1, 4):
        zoo = _zoo(n)
        peaks[n], results[n] = _peak_heap(
            lambda: compute_similarity(zoo, PROBE, dict(type='LinearCKA', **QUIET), str(tmp_path / f'z{n}')))
        assert not zoo.models, f'the stage left {list(zoo.models)} built'
        assert zoo.known_nodes('r18_0') is not None  # what it learnt without the weights stays
    # holding the zoo would cost 4 x 45 MB; one model at a time costs one model whatever the zoo
    assert peaks[1] > 0.8 * WEIGHTS, peaks
    print({n: f'{p / 2**20:.1f} MiB' for n, p in peaks.items()})
    assert peaks[4] < peaks[1] + 0.5 * WEIGHTS, {n: f'{p / 2**20:.1f} MiB' for n, p in peaks.items()}
    assert results[4].full().shape == (4 * 8, 4 * 8)
    # the same models give the same matrix whatever else is in the zoo
    np.testing.assert_allclose(results[4].matrices[('r18_0', 'r18_0')], results[1].matrices[('r18_0', 'r18_0')],
                               atol=1e-10)


def test_accumulators_store_holds_one_model_and_leaves_nothing(tmp_path):
    from dery.similarity import compute_similarity
    zoo = _zoo(3)
    wd = str(tmp_path / 'acc')
    res = compute_similarity(zoo, PROBE, dict(type='MinibatchCKA', store='accumulators', **QUIET), wd)
    ref = compute_similarity(_zoo(3), PROBE, dict(type='MinibatchCKA', **QUIET), str(tmp_path / 'feat'))
    np.testing.assert_allclose(res.full(), ref.full(), atol=1e-10)
    assert not zoo.models
    assert not osp.isdir(osp.join(wd, 'similarity_cache'))  # Gram matrices and probe batches removed


WORKER = r"""
import json, os, sys
import torch
sys.path.insert(0, os.environ['DERY_TEST_DIR'])
from test_zoo_scale import PROBE, QUIET, _zoo
import dery.zoo.cache as zc
built = []
_orig = zc.build_zoo_model
def _record(entry, **kwargs):
    built.append(entry.name if hasattr(entry, 'name') else str(entry))
    return _orig(entry, **kwargs)
zc.build_zoo_model = _record
from dery.similarity import compute_similarity
res = compute_similarity(_zoo(4), PROBE, dict(type='LinearCKA', **QUIET), sys.argv[2], launcher='pytorch')
import torch.distributed as dist
rank = dist.get_rank()
with open(os.path.join(sys.argv[1], f'rank{rank}.json'), 'w') as f:
    json.dump(dict(built=built, world=res.meta['world_size'], captured=res.meta['captured']), f)
if rank == 0:
    import numpy as np
    np.save(os.path.join(sys.argv[1], 'full.npy'), res.full())
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.timeout(240)
def test_two_processes_shard_the_models_and_equal_one(tmp_path):
    from dery.similarity import compute_similarity
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    torchrun = osp.join(osp.dirname(sys.executable), 'torchrun')
    env = dict(os.environ, OMP_NUM_THREADS='1', DERY_TEST_DIR=HERE, HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    env.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    proc = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', str(script), str(tmp_path),
                           str(tmp_path / 'dist')], env=env, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.load(open(tmp_path / f'rank{r}.json')) for r in range(2)]
    built = [set(r['built']) for r in ranks]
    assert all(r['world'] == 2 for r in ranks)
    # each process built only its share of the zoo (no model twice), together all of it
    assert built[0] and built[1] and not built[0] & built[1], built
    assert built[0] | built[1] == {e['name'] for e in ZOO}
    assert sorted(ranks[0]['captured']) == sorted(e['name'] for e in ZOO)
    single = compute_similarity(_zoo(4), PROBE, dict(type='LinearCKA', **QUIET), str(tmp_path / 'single'))
    np.testing.assert_array_equal(np.load(tmp_path / 'full.npy'), single.full())


# ----------------------------------------------------------------------------- pieces
def test_stored_probe_batches_equal_the_data_set_and_survive_damage(tmp_path):
    from dery.similarity import ProbeSet
    from dery.similarity.cache import ProbeCache
    probe = ProbeSet(PROBE)
    direct = [x for _, x in probe.iter_batches(range(len(probe)))]
    cache = ProbeCache(str(tmp_path), probe.key)
    probe.store(cache)
    assert cache.complete(len(probe))
    again = ProbeSet(PROBE).store(cache)
    for (t, x), y in zip(again.iter_batches(range(len(probe))), direct):
        assert torch.equal(x, y), t
    with open(cache._path(1), 'r+b') as f:  # a damaged batch is read from the data set again
        f.seek(100)
        f.write(b'\0' * 16)
    assert torch.equal(dict(again.iter_batches([1]))[1], direct[1])


def test_gram_updates_equal_feature_updates():
    from dery.similarity import MinibatchCKA
    g = torch.Generator().manual_seed(0)
    models = [[torch.randn(8, d, generator=g) for d in (3, 5)], [torch.randn(8, 7, generator=g) * 1e3 + 5]]
    models[1].append(torch.ones(8, 2))  # a constant node
    a, b = MinibatchCKA(), MinibatchCKA()
    for _ in range(3):
        feats = [f + 0.1 * torch.randn(f.shape, generator=g) for m in models for f in m]
        a.update(feats)
        parts = [b.batch_grams(feats[:2]), b.batch_grams(feats[2:])]
        b.update_grams(*(torch.cat(x) for x in zip(*parts)))
    np.testing.assert_allclose(a.compute().numpy(), b.compute().numpy(), atol=1e-12)


def test_work_queue_and_threads(monkeypatch):
    from dery.utils.dist import WorkQueue, available_cores, threads_per_process
    q = WorkQueue(3)
    assert [q.next() for _ in range(5)] == [0, 1, 2, None, None]
    for var in ('DERY_NUM_THREADS', 'OMP_NUM_THREADS', 'LOCAL_WORLD_SIZE', 'TORCHELASTIC_RUN_ID'):
        monkeypatch.delenv(var, raising=False)
    cores = available_cores()
    assert threads_per_process()[0] == cores
    monkeypatch.setenv('LOCAL_WORLD_SIZE', str(2 * cores))  # more processes than cores: one thread each
    assert threads_per_process()[0] == 1
    monkeypatch.setenv('OMP_NUM_THREADS', '3')  # the user's choice wins
    assert threads_per_process() == (3, 'OMP_NUM_THREADS')
    monkeypatch.setenv('DERY_NUM_THREADS', '2')
    assert threads_per_process() == (2, 'DERY_NUM_THREADS')


def test_trim_heap_returns_freed_heap_pages():
    """After a forward pass the assembly stage trims the heap (dery/utils/memory.py): freed blocks below
    glibc's mmap threshold leave the process (the heap's free bytes fall), nothing in use is touched."""
    from dery.utils.memory import trim_heap
    heap = _heap()  # skips without glibc >= 2.33
    fn = ctypes.CDLL('libc.so.6').mallinfo2
    fn.restype = _MallInfo2
    libc = ctypes.CDLL('libc.so.6')
    libc.malloc.restype = ctypes.c_void_p
    blocks = [libc.malloc(64 << 10) for _ in range(256)]  # 16 MiB of heap blocks (below the threshold)
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)  # resident
    keep = blocks[-1]
    for b in blocks[:-1]:
        libc.free(ctypes.c_void_p(b))
    in_use = heap()
    rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')  # noqa: E731
    before = rss()
    trim_heap()
    assert abs(heap() - in_use) < 64 << 10  # nothing in use freed
    assert before - rss() >= 8 << 20   # most of the 16 MiB went back to the OS
    libc.free(ctypes.c_void_p(keep))


def test_assembly_stage_holds_a_candidate_not_the_zoo(tmp_path):
    """Stages 1-3 on 4 ResNet-18s: the similarity stage holds one model at a time, the assembly stage one
    for its zoo pass and a candidate's (<= num_sets) for a proxy evaluation; nothing stays built."""
    from mmengine.config import Config

    from dery.apis import assemble
    from dery.zoo import ZooCache

    class Counting(ZooCache):
        most = 0

        def __getitem__(self, name):
            zm = super().__getitem__(name)
            Counting.most = max(Counting.most, len(self.models))
            return zm

    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dery', 'tiny_cpu.py'))
    cfg.zoo = dict(pretrained=False, input_size=(3, 16, 16), models=[dict(e) for e in ZOO])
    cfg.probe = PROBE
    cfg.target.dataset.image_size = 16
    cfg.merge_from_dict({'partitioner.num_sets': 2, 'partitioner.restarts': 2, 'proxy.num_batches': 1,
                         'solver.top_m': 2, 'assembly.stitch_samples': 16, 'similarity.plot': False,
                         'similarity.progress': False, 'constraints.params': (None, 12_000_000),
                         'constraints.flops': (None, None)})
    zoo = Counting(cfg.zoo['models'], pretrained=False, input_size=(3, 16, 16))
    work = str(tmp_path / 'work')
    record = assemble(cfg, work, zoo=zoo)
    assert len(record.blocks) == 2 and not zoo.models, list(zoo.models)
    assert Counting.most <= 2, Counting.most  # never more than a candidate's models at once (of 4)
    assert not [f for f in os.listdir(work) if f.startswith('.assembly_features_')]  # stitch features removed


def test_surrogate_kernels_in_chunks_equal_the_dense_count():
    """The per-block surrogate: node kernels made chunk by chunk (sorted unit draws, one product) equal
    an independent count of agreeing sign bits on the same drawn units, and the unit draws follow the
    node order as :func:`node_kernel` on the whole batch would draw them."""
    from dery.assembly.surrogate import NodeKernels, block_scores, node_kernel
    torch.manual_seed(0)
    outs = dict(a=torch.randn(20, 8, 9, 9), b=torch.randn(20, 30), c=torch.randn(20, 4, 5))
    nk = NodeKernels(torch.Generator().manual_seed(3), max_units=100)
    for rows in torch.arange(20).split(7):
        for node, out in outs.items():
            nk.add(node, out[rows])
    g = torch.Generator().manual_seed(3)
    kernels = []
    for node, out in outs.items():
        flat = out.flatten(1)
        units = torch.randperm(flat.shape[1], generator=g)[:100] if flat.shape[1] > 100 else torch.arange(flat.shape[1])
        bits = (flat[:, units] > 0).numpy()
        dense = (bits[:, None, :] == bits[None, :, :]).sum(-1)  # units on which samples i and j agree
        got = nk.kernel(node)
        assert np.array_equal(got.numpy(), dense)
        kernels.append(got)
    g = torch.Generator().manual_seed(3)
    assert all(torch.equal(node_kernel(out, g, 100), k) for out, k in zip(outs.values(), kernels))

    class Card:
        nodes = list(outs)

        def index(self, node):
            return self.nodes.index(node)
    Block = type('Block', (), {})
    blocks = []
    for start, end in (('a', 'b'), ('c', 'c')):
        b = Block()
        b.start, b.end = start, end
        blocks.append(b)
    scores = block_scores('m', Card(), blocks, kernels)
    k = (kernels[0] + kernels[1]).double() + 1e-3 * torch.eye(20, dtype=torch.float64)
    assert scores['m:0'] == pytest.approx(float(np.linalg.slogdet(k.numpy())[1]))


def test_zoo_pass_skips_the_blocks_over_the_budget_alone(tiny_reference, monkeypatch):
    """A block over the max params on its own is in no assembly: the assembly's zoo pass makes no surrogate
    score for it (listed as unscored), a model whose every block is over runs no forward, and the other
    blocks' scores and the stitch features they need equal those of a pass without a budget."""
    from mmengine.config import Config

    from dery.assembly import AssemblyContext
    from dery.errors import ConfigError
    from dery.partition import Partition
    from dery.zoo import ZooCache
    from dery.zoo.zoo_model import ZooModel
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dery', 'tiny_cpu.py'))
    cfg.merge_from_dict({'proxy.num_batches': 1, 'assembly.stitch_samples': 16})
    part = Partition.load(osp.join(tiny_reference, 'partition.json'))
    cfg.constraints = dict(params=(None, None), flops=(None, None))
    full = AssemblyContext(cfg, ZooCache.from_config(cfg.zoo), part)
    by_model = {}
    for c in full.tables.candidates:
        by_model.setdefault(c.model, []).append(c)
    out = max(by_model, key=lambda m: min(c.params for c in by_model[m]))  # the model to leave out whole
    hi = min(c.params for c in by_model[out]) - 1
    over = sorted(c.id for c in full.tables.candidates if c.params > hi)
    assert len(by_model) > 1 and 0 < len(over) < len(full.tables.candidates)
    forwards = {}
    run = ZooModel.node_outputs

    def counted(self, x, nodes=None, on_output=None):
        forwards[self.name] = forwards.get(self.name, 0) + 1
        return run(self, x, nodes=nodes, on_output=on_output)
    monkeypatch.setattr(ZooModel, 'node_outputs', counted)
    cfg.constraints = dict(params=(None, hi), flops=(None, None))
    ctx = AssemblyContext(cfg, ZooCache.from_config(cfg.zoo), part)
    assert sorted(ctx.unscored) == over and out not in forwards and set(forwards) == set(by_model) - {out}
    assert ctx.scores == {k: v for k, v in full.scores.items() if k not in over}  # same draws, same scores
    for name, mb in part.models.items():
        ok = [f'{name}:{j}' not in over for j in range(len(mb.blocks))]
        need = {b.end for j, b in enumerate(mb.blocks[:-1]) if ok[j] or ok[j + 1]}
        assert {n for n in mb.nodes if n in ctx.features[name]} == need
        for node in need:
            assert torch.equal(ctx.features[name].output_of(node), full.features[name].output_of(node))
    with pytest.raises(ConfigError, match='alone exceed the budget'):
        ctx.build([f'{out}:0'] + [c.id for c in full.tables.candidates if c.model != out][1:])
    full.close()
    ctx.close()


def test_timings_give_every_step_and_the_peak_memory_per_stage(tiny_reference):
    """timings.json (what the tools' end table and benchmarks/zoo_scale.py read): the seconds of each step and,
    per stage, the process's peak resident size at its end (one process ran both: never decreasing)."""
    from rich.console import Console

    from dery.cli import stage_time_table
    data = json.load(open(osp.join(tiny_reference, 'timings.json')))
    part, asm = data['partition'], data['assemble']
    for key in ('similarity_capture_seconds', 'similarity_build_seconds', 'total_seconds'):
        assert part[key] > 0
    for key in ('zoo_pass_forward_seconds', 'proxy_score_seconds', 'ilp_seconds', 'total_seconds'):
        assert asm[key] > 0
    assert 0.2 < part['peak_rss_gib'] <= asm['peak_rss_gib'] < 8  # torch alone is ~0.5 GiB
    console = Console(width=160, record=True, file=open(os.devnull, 'w'))
    console.print(stage_time_table(tiny_reference, ('partition', 'assemble'), wall=1.0))
    text = console.export_text()
    assert text.count('peak RSS so far (GiB)') == 2 and f"{asm['peak_rss_gib']:.2f}" in text
    assert 'zoo pass forward' in text and 'proxy evaluations' in text
