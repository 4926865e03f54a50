"""The paper's zoo at full size: wall time, peak memory and seconds per stage (not a test).

    python benchmarks/zoo_scale.py [--models 24] [--samples 64] [--batch-size 16] [--nproc 1]
        [--scaling 6,12,24] [--root DIR] [--work-dir DIR] [--no-forward] [--config CFG]

One run of ``tools/assemble.py`` (similarity, partition, assembly) on the config of
``configs/dery/dery-k4-30m-6g_8xb32-ft-40k_cifar100.py`` with the first ``--models`` models of
the paper's 24-model zoo (``configs/_base_/zoo/dery_zoo24.py``), random init
(``zoo.pretrained=False``), 224 x 224, and synthetic probe / target data
(``SyntheticImageDataset``: ``--samples`` probe images in batches of ``--batch-size``; the proxy's
5 x 32 target images). ``--nproc 2`` runs it under ``torchrun`` (CPU: gloo).

Printed, for each zoo size:

* wall time of the tool, peak RSS (the largest of its processes: ``VmHWM`` of every descendant,
  polled), the seconds of every stage (from ``WORK_DIR/timings.json``);
* ``F``: the zoo's forward-only time over the same probe batches (each model built, run whole,
  head included, over the normalised probe batches, freed; measured in this run, before the
  tool), ``P``: the assembly's whole-model proxy evaluations (solver time minus ILP time), and the
  ratio ``tool wall / (F + P)`` (issue #16, target <= 1.5) and ``similarity / F`` (target on GPU
  <= 1.05); ``Z``: the assembly's zoo pass forward over the proxy's target images (measured:
  ``zoo_pass_forward_seconds``), ``wall / (F + Z + P)`` and ``(F + Z + P) / (F + P)``, what the
  forward passes alone give the first ratio;
* with ``--scaling 6,12,24``: one table over the zoo sizes: time against the zoo's total FLOPs,
  peak memory against the largest model's weights.

``--root DIR`` runs the tools and the package of another source tree (e.g. a ``git archive HEAD``
copy, to compare with the code before a change); ``--keep`` leaves the work dirs for comparing
``partition.json`` / ``assembly.json``. On a machine with a GPU the models run there (the tools
pick it up); the figures are the same.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
BASE_CONFIG = 'configs/dery/dery-k4-30m-6g_8xb32-ft-40k_cifar100.py'


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', type=int, default=24, help='the first N models of the 24-model zoo')
    p.add_argument('--samples', type=int, default=64, help='probe images')
    p.add_argument('--batch-size', type=int, default=16, help='probe batch size')
    p.add_argument('--nproc', type=int, default=1, help='processes (torchrun) for the tool run')
    p.add_argument('--tool', choices=('assemble', 'partition'), default='assemble',
                   help='tools/assemble.py (stages 1-3, default) or tools/partition.py (stages 1-2)')
    p.add_argument('--scaling', default=None, help='comma-separated zoo sizes, e.g. 6,12,24')
    p.add_argument('--root', default=ROOT, help='source tree whose tools and package run')
    p.add_argument('--config', default=BASE_CONFIG, help='base config (relative to --root)')
    p.add_argument('--work-dir', default=None, help='where the runs go (default: a temporary dir)')
    p.add_argument('--keep', action='store_true', help='keep the work dirs')
    p.add_argument('--no-forward', action='store_true', help='no paired forward-only measurement')
    p.add_argument('--separate-forward', action='store_true',
                   help='also time the forward-only loop in a separate process before the tool (noisier)')
    p.add_argument('--cards', nargs=2, help=argparse.SUPPRESS)
    p.add_argument('--cfg-options', nargs='*', default=[], help='more --cfg-options for the tool')
    p.add_argument('--json', default=None, help='also write the figures to this JSON file')
    p.add_argument('--forward-only', nargs=2, metavar=('CONFIG', 'OUT'), help=argparse.SUPPRESS)
    return p.parse_args()


# ----------------------------------------------------------------------------- config
CONFIG = """_base_ = [{base!r}]
zoo = dict(pretrained=False, models={models!r})
probe = dict(
    _delete_=True,
    dataset=dict(type='SyntheticImageDataset', num_samples={samples}, num_classes=10, image_size=224,
                 seed=0, pipeline=[dict(type='PackInputs')]),
    num_samples={samples}, batch_size={batch_size}, num_workers=0, seed=0,
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], to_rgb=True))
target = dict(
    _delete_=True,
    dataset=dict(type='SyntheticImageDataset', num_samples={target}, num_classes=10, image_size=224,
                 seed=1, pipeline=[dict(type='PackInputs')]))
"""


def zoo24(root):
    ns = {}
    with open(osp.join(root, 'configs', '_base_', 'zoo', 'dery_zoo24.py')) as f:
        exec(f.read(), ns)  # noqa: S102 - our own config file
    return list(ns['zoo']['models'])


def write_config(path, root, base, models, samples, batch_size):
    with open(path, 'w') as f:
        f.write(CONFIG.format(base=osp.join(root, base), models=list(models), samples=samples,
                              batch_size=batch_size, target=max(160, samples)))
    return path


# ----------------------------------------------------------------------------- memory
def _children(pid):
    out = []
    try:
        for tid in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{tid}/children') as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _hwm(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak RSS (VmHWM) of every process under ``pid``, polled every 0.1 s."""

    def __init__(self, pid):
        self.pid, self.peaks, self._stop = pid, {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            todo = [self.pid]
            while todo:
                p = todo.pop()
                h = _hwm(p)
                if h is not None:
                    cmd = ''
                    try:
                        with open(f'/proc/{p}/cmdline', 'rb') as f:
                            cmd = f.read().replace(b'\0', b' ').decode(errors='replace')
                    except OSError:
                        pass
                    if 'python' in cmd or p == self.pid:
                        self.peaks[p] = max(self.peaks.get(p, 0), h)
                todo += _children(p)
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.peaks


# ----------------------------------------------------------------------------- forward only
def forward_only(config, out):
    """Build each zoo model, time its plain forward over the probe batches, free it."""
    import gc

    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from dery.similarity import ProbeSet
    from dery.zoo import ZooCache, count_params
    try:
        from dery.utils.dist import setup_threads
        setup_threads()
    except ImportError:  # the code before issue #16
        pass
    cfg = Config.fromfile(config)
    init_default_scope('dery')
    zoo = ZooCache.from_config(cfg.zoo)
    probe = ProbeSet(cfg.probe.to_dict() if hasattr(cfg.probe, 'to_dict') else dict(cfg.probe))
    batches = [x for _, x in probe.iter_batches(range(len(probe)))]
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    flops_cache = osp.join(osp.dirname(osp.dirname(out)), 'flops.json')
    rows = {}
    cache = json.load(open(flops_cache)) if osp.isfile(flops_cache) else {}
    for name in zoo.names:
        t0 = time.perf_counter()
        zm = zoo[name]
        build = time.perf_counter() - t0
        model = zm.model.to(device)
        with torch.no_grad():
            if device.type == 'cuda':  # warm-up outside the timing (kernels, cudnn autotune)
                model(batches[0].to(device))
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x in batches:
                model(x.to(device))
            if device.type == 'cuda':
                torch.cuda.synchronize()
            fwd = time.perf_counter() - t0
        if name not in cache:
            zm.model.cpu()
            cache[name] = int(zm.flops(0, -1) + zm.stem_flops())
        params = count_params(zm.model)
        rows[name] = dict(build_seconds=build, forward_seconds=fwd, params=params, flops=cache[name],
                          weight_bytes=sum(p.numel() * p.element_size() for p in zm.model.parameters()))
        print(f'forward-only {name}: build {build:.1f}s, forward {fwd:.1f}s over {len(batches)} batches',
              flush=True)
        del zm, model
        zoo.models.pop(name, None)
        gc.collect()
    with open(flops_cache, 'w') as f:
        json.dump(cache, f)
    with open(out, 'w') as f:
        json.dump(rows, f)


# ----------------------------------------------------------------------------- paired forwards
# The tool runs under this wrapper: each time the similarity stage runs a zoo model on a probe batch
# (``dery.similarity.pipeline.capture_batch``), a plain forward of the same model (head included) on
# the same batch is timed right next to it (before it on every other call). Adjacent measurements see
# the same machine load: on a shared machine two separate runs of one loop differ by 30 %.
WRAPPER = r"""
import atexit, json, os, runpy, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
import torch
from dery.similarity import pipeline
_orig = pipeline.capture_batch
acc = dict(forward_seconds=0.0, capture_seconds=0.0, batches=0, models={})


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(key, fn):
    _sync()
    t = time.perf_counter()
    r = fn()
    _sync()
    acc[key] += time.perf_counter() - t
    return r


def paired(m, x, *args, **kwargs):
    p = next(m.model.parameters())

    def fwd():
        with torch.no_grad():
            m.model(x.to(p.device))
    first = acc['batches'] % 2 == 0
    if first:
        out_ = _timed('capture_seconds', lambda: _orig(m, x, *args, **kwargs))
        _timed('forward_seconds', fwd)
    else:
        _timed('forward_seconds', fwd)
        out_ = _timed('capture_seconds', lambda: _orig(m, x, *args, **kwargs))
    acc['batches'] += 1
    if m.name not in acc['models']:
        acc['models'][m.name] = sum(q.numel() * q.element_size() for q in m.model.parameters())
    return out_


pipeline.capture_batch = paired


@atexit.register
def _dump():
    with open(out + '.' + os.environ.get('RANK', '0'), 'w') as f:
        json.dump(acc, f)


runpy.run_path(sys.argv[0], run_name='__main__')
"""


# ----------------------------------------------------------------------------- runs
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p),
               HF_HUB_OFFLINE='1', MPLBACKEND='Agg')
    env.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    return env


def run_forward(root, config, work):
    out = osp.join(work, 'forward.json')
    cmd = [sys.executable, osp.abspath(__file__), '--forward-only', config, out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'forward-only run failed:\n{(proc.stdout + proc.stderr)[-4000:]}')
    rows = json.load(open(out))
    return rows, time.perf_counter() - t0


def run_tool(root, config, work_dir, nproc, options, name='assemble', paired=True):
    tool = [osp.join(root, 'tools', f'{name}.py'), config, '--work-dir', work_dir]
    fwd_out = osp.join(osp.dirname(work_dir), 'paired.json')
    if paired:
        wrapper = osp.join(osp.dirname(work_dir), 'paired_wrapper.py')
        with open(wrapper, 'w') as f:
            f.write(WRAPPER)
        tool = [wrapper, fwd_out] + tool
    if nproc > 1:
        torchrun = osp.join(osp.dirname(sys.executable), 'torchrun')
        cmd = [torchrun, '--nproc_per_node', str(nproc), '--master_port', str(_free_port())] + tool + \
            ['--launcher', 'pytorch']
    else:
        cmd = [sys.executable] + tool
    if options:
        cmd += ['--cfg-options', *options]
    log = open(osp.join(osp.dirname(work_dir), 'tool.log'), 'w')
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=log, stderr=subprocess.STDOUT)
    mem = PeakRSS(proc.pid)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peaks = mem.stop()
    log.close()
    if rc != 0:
        with open(log.name) as f:
            raise SystemExit(f'tool failed ({rc}):\n{f.read()[-5000:]}')
    timings = {}
    if osp.isfile(osp.join(work_dir, 'timings.json')):
        timings = json.load(open(osp.join(work_dir, 'timings.json')))
    workers = {p: v for p, v in peaks.items() if p != proc.pid} if nproc > 1 else peaks
    pairs = []
    for r in range(nproc):
        if osp.isfile(f'{fwd_out}.{r}'):
            pairs.append(json.load(open(f'{fwd_out}.{r}')))
    return dict(wall=wall, peak_rss=max(workers.values()), peaks=sorted(workers.values(), reverse=True),
                timings=timings, log=log.name, paired=pairs)


def _load():
    try:
        return ' '.join(open('/proc/loadavg').read().split()[:3])
    except OSError:
        return '?'


def measure(args, n, base):
    names = zoo24(args.root)[:n]
    work = osp.join(base, f'zoo{n}_np{args.nproc}')
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    config = write_config(osp.join(work, 'zoo_scale.py'), args.root, args.config, names, args.samples,
                          args.batch_size)
    load0 = _load()
    fwd = run_forward(args.root, config, work)[0] if args.separate_forward else {}
    tool = run_tool(args.root, config, osp.join(work, 'work'), args.nproc, args.cfg_options, args.tool,
                    paired=not args.no_forward)
    t = tool['timings']
    part, asm = t.get('partition', {}), t.get('assemble', {})
    pairs = tool['paired']
    # F: the paired plain forwards of all ranks (the zoo's forward-only time over the probe). The tool's
    # own time: its wall minus the paired forwards (with several processes: minus the most any rank ran,
    # an upper bound of its own time); the similarity stage's (rank 0's) minus rank 0's.
    F = sum(p['forward_seconds'] for p in pairs)
    F_rank = max((p['forward_seconds'] for p in pairs), default=0.0)
    F0 = pairs[0]['forward_seconds'] if pairs else 0.0
    wall = tool['wall'] - F_rank
    ilp = asm.get('ilp_seconds', 0.0)
    P = max(0.0, asm.get('solver_seconds', 0.0) - ilp)
    sim = part.get('similarity_seconds')
    if sim is not None:
        sim -= F_rank  # the paired forwards ran inside the similarity stage
    cap = part.get('similarity_capture_seconds')
    if cap is not None:
        cap -= F0
    pair_ratio = (sum(p['capture_seconds'] for p in pairs) / F) if F else None
    cards = zoo_cards(args.root, names, work)
    # the assembly's zoo pass runs the zoo over the proxy's target images (num_batches x batch_size; the
    # surrogate scores and stitch features; a block over the budget on its own is skipped, the forward stops
    # after the last node still needed): Z, its measured forward time (timings.json, kernels included)
    n_target = None
    asm_path = osp.join(work, 'work', 'assembly.json')
    if osp.isfile(asm_path):
        proxy = json.load(open(asm_path)).get('proxy') or {}
        if proxy.get('num_batches') and proxy.get('batch_size'):
            n_target = min(int(proxy['num_batches']) * int(proxy['batch_size']), max(160, args.samples))
    Z = asm.get('zoo_pass_forward_seconds')
    res = dict(models=n, nproc=args.nproc, samples=args.samples, tool=args.tool, wall=wall,
               wall_with_paired=tool['wall'], peak_rss=tool['peak_rss'], peaks=tool['peaks'], forward_seconds=F,
               proxy_seconds=P, similarity_seconds=sim, capture_seconds=cap,
               ratio=wall / (F + P) if F else None, target_images=n_target, forward_target_seconds=Z,
               ratio_all_forwards=wall / (F + Z + P) if (F and Z) else None,
               forwards_ratio=(F + Z + P) / (F + P) if (F and Z) else None, similarity_ratio=(sim / F) if (F and sim) else None,
               capture_ratio=(cap / F) if (F and cap) else None, pair_ratio=pair_ratio,
               flops=sum(c['flops'] for c in cards.values()),
               largest_weights=max(c['weight_bytes'] for c in cards.values()),
               total_weights=sum(c['weight_bytes'] for c in cards.values()),
               separate_forward=fwd, timings=t, load=(load0, _load()), work_dir=osp.join(work, 'work'),
               log=tool['log'])
    return res


def zoo_cards(root, names, work):
    """FLOPs (one image at 224) and weight bytes of each model: from ~/.cache/dery/zoo_scale.json, else
    measured once in a subprocess (built one at a time)."""
    path = osp.join(osp.expanduser('~'), '.cache', 'dery', 'zoo_scale.json')
    cards = json.load(open(path)) if osp.isfile(path) else {}
    missing = [n for n in names if n not in cards]
    if missing:
        out = osp.join(work, 'cards.json')
        cmd = [sys.executable, osp.abspath(__file__), '--cards', ','.join(missing), out]
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f'measuring the zoo failed:\n{(proc.stdout + proc.stderr)[-4000:]}')
        cards.update(json.load(open(out)))
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(cards, f, indent=1)
    return {n: cards[n] for n in names}


def measure_cards(names, out):
    import gc

    from dery.zoo import ZooCache, count_params
    zoo = ZooCache(pretrained=False)
    cards = {}
    for name in names:
        zm = zoo[name]
        cards[name] = dict(flops=int(zm.flops(0, -1) + zm.stem_flops()), params=count_params(zm.model),
                           weight_bytes=sum(p.numel() * p.element_size() for p in zm.model.parameters()))
        del zm
        zoo.models.pop(name, None)
        gc.collect()
    with open(out, 'w') as f:
        json.dump(cards, f)


def _fmt_s(v):
    return '-' if v is None else f'{v:.1f}s'


def report(r):
    gb = 1 << 30
    print(f"\n== tools/{r['tool']}.py, {r['models']} models, {r['samples']} probe images, {r['nproc']} process(es); "
          f"load average {r['load'][0]} -> {r['load'][1]}")
    print(f"tool wall {r['wall']:.1f}s, peak RSS {r['peak_rss'] / gb:.2f} GB"
          + (f" (per process: {', '.join(f'{p / gb:.2f}' for p in r['peaks'])} GB)" if r['nproc'] > 1 else ''))
    if r['forward_seconds']:
        print(f"forward-only F = {r['forward_seconds']:.1f}s (paired plain forwards, whole models, all ranks; "
              f"the tool's wall without them {r['wall']:.1f}s, with them {r['wall_with_paired']:.1f}s), "
              f"proxy evaluations P = {r['proxy_seconds']:.1f}s")
        print(f"ratio wall / (F + P) = {r['ratio']:.2f} (target <= 1.5); similarity stage / F = "
              + (f"{r['similarity_ratio']:.2f}" if r['similarity_ratio'] else '-')
              + (f"; its feature capture / F = {r['capture_ratio']:.2f}" if r.get('capture_ratio') else '')
              + (f"; capture_batch / plain forward, paired = {r['pair_ratio']:.3f}" if r.get('pair_ratio') else ''))
    if r.get('ratio_all_forwards'):
        print(f"the assembly's zoo pass over the {r['target_images']} target images (surrogate scores, stitch "
              f"features), measured: Z = {r['forward_target_seconds']:.1f}s; wall / (F + Z + P) = "
              f"{r['ratio_all_forwards']:.2f}; the forwards alone, (F + Z + P) / (F + P) = {r['forwards_ratio']:.2f}")
    print(f"zoo: {r['flops'] / 1e9:.1f} GFLOPs per image, weights {r['total_weights'] / gb:.2f} GB in all, "
          f"the largest model {r['largest_weights'] / gb:.2f} GB")
    print('stage seconds (timings.json):')
    for stage, vals in r['timings'].items():
        items = ', '.join(f'{k} {v:.2f}' if isinstance(v, (int, float)) else f'{k} {v}' for k, v in vals.items()
                          if not isinstance(v, (list, dict)))
        print(f'  {stage}: {items}')


def scaling_table(rows):
    """Time against the zoo's FLOPs, peak memory against the largest model (and the whole zoo)."""
    gb = 1 << 30
    print('\n== scaling (wall: the tool without the paired forwards; FLOPs: multiply-adds per 224 image; '
          'ratio: wall / (F + P), ratio+t: wall / (F + Z + P), Z: the zoo pass over the target images)')
    print(f"{'models':>6} {'GFLOPs/img':>10} {'wall s':>8} {'s/TFLOP':>8} {'F s':>7} {'Z s':>7} {'P s':>6} {'ratio':>6} "
          f"{'ratio+t':>7} {'peak GB':>8} {'largest GB':>10} {'zoo GB':>7} {'peak/largest':>12} {'peak/zoo':>8}")
    for r in rows:
        fl = (r['flops'] or 0) / 1e9
        tfl = fl * r['samples'] / 1e3 if fl else None
        lg, zw = (r['largest_weights'] or 0) / gb, (r['total_weights'] or 0) / gb
        pk = r['peak_rss'] / gb
        print(f"{r['models']:>6} {fl:>10.1f} {r['wall']:>8.1f} "
              f"{(r['wall'] / tfl if tfl else float('nan')):>8.2f} {r['forward_seconds']:>7.1f} "
              f"{(r.get('forward_target_seconds') or float('nan')):>7.1f} {r['proxy_seconds']:>6.1f} {(r['ratio'] or float('nan')):>6.2f} "
              f"{(r.get('ratio_all_forwards') or float('nan')):>7.2f} {pk:>8.2f} {lg:>10.2f} {zw:>7.2f} "
              f"{(pk / lg if lg else float('nan')):>12.2f} {(pk / zw if zw else float('nan')):>8.2f}")


def main():
    args = _args()
    if args.forward_only:
        sys.path.insert(0, os.getcwd())
        return forward_only(*args.forward_only)
    if args.cards:
        sys.path.insert(0, os.getcwd())
        return measure_cards(args.cards[0].split(','), args.cards[1])
    args.root = osp.abspath(args.root)
    base = args.work_dir or tempfile.mkdtemp(prefix='dery_zoo_scale_')
    os.makedirs(base, exist_ok=True)
    sizes = [int(s) for s in args.scaling.split(',')] if args.scaling else [args.models]
    rows = []
    try:
        for n in sizes:
            r = measure(args, n, base)
            report(r)
            rows.append(r)
        if len(rows) > 1:
            scaling_table(rows)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(rows, f, indent=1)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
