"""Library side of ``tools/demo.py``: zoo-weight export, a progress hook, run logs, plots, report.

The demo's numbers all come from files the runs write: every training run is
an mmengine ``Runner`` whose ``LoggerHook`` writes ``vis_data/scalars.json``
(losses and ``accuracy/top1`` at each validation); :func:`read_scalars` reads
them back, ``results.json`` collects them, and :func:`write_report` renders
``report.md`` from ``results.json`` alone.
"""
import json
import math
import os
import os.path as osp

import torch
from mmengine.hooks import Hook

from dery.utils import atomic_write


# ---------------------------------------------------------------------------- zoo weights
def export_zoo_weights(backbone, entry, path, input_size=(3, 16, 16)):
    """Save a single-model ``ReassembledBackbone``'s weights as its zoo model's plain state dict.

    ``backbone`` holds the stem and every node of the zoo model ``entry`` (one
    block, first node to last). A fresh random-init zoo model is built, the
    trained backbone loaded into a backbone that shares that model's modules,
    and the model's own ``state_dict()`` saved: its keys are those of
    ``build_zoo_model(entry, pretrained=False)``, so the entry with
    ``weights: path`` loads it through the normal adapter. Parameters the
    nodes never use (final norms, the classifier) keep their random init.
    The file is then re-loaded through the adapter and compared.
    """
    from dery.models import ReassembledBackbone, ZooCache
    from dery.zoo import build_zoo_model
    entry = {k: v for k, v in dict(entry).items() if k != 'weights'}
    cache = ZooCache([entry], pretrained=False, input_size=input_size)
    fresh = ReassembledBackbone(backbone.block_cfgs, pretrained=False, input_size=input_size,
                                stem=backbone.stem_type, stitch_init='random',
                                out_indices=backbone.out_indices, out_norm=len(backbone.out_norms) > 0,
                                _zoo_cache=cache)
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    state = {k: v.detach().cpu().clone() for k, v in cache[entry['name']].model.state_dict().items()}
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)
    loaded = build_zoo_model(dict(entry, weights=osp.abspath(path)), pretrained=True).model.state_dict()
    bad = [k for k, v in state.items() if k not in loaded or not torch.equal(loaded[k].cpu(), v)]
    if bad:
        raise RuntimeError(f'exported zoo weights {path} do not load back into {entry["name"]} '
                           f'({len(bad)} tensors differ, e.g. {bad[:3]})')
    return path


# ---------------------------------------------------------------------------- progress
class SharedCounterHook(Hook):
    """Writes the current iteration into a shared array slot (progress bars in the parent process)."""

    priority = 'VERY_LOW'

    def __init__(self, counters, slot):
        self.counters, self.slot = counters, slot

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.counters[self.slot] = runner.iter + 1


# ---------------------------------------------------------------------------- run logs
def find_scalars(log_dir):
    path = osp.join(log_dir, 'vis_data', 'scalars.json')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: the run wrote no scalars (LocalVisBackend)')
    return path


def read_scalars(path):
    """``dict(loss=[[step, value]], top1=[[step, value]])`` from an mmengine ``scalars.json``."""
    loss, top1 = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if 'accuracy/top1' in rec:
                top1.append([int(rec['step']), float(rec['accuracy/top1'])])
            elif 'loss' in rec:
                loss.append([int(rec['step']), float(rec['loss'])])
    return dict(loss=loss, top1=top1)


def mean_std(values):
    values = [float(v) for v in values]
    if not values:
        return float('nan'), float('nan')
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m)**2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------------------- formatting
def human(n, digits=3):
    n = float(n)
    for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.{digits}f}{suffix}'
    return f'{n:.0f}'


def fmt_top1(row):
    """``95.23 ± 0.41`` (sample std over seeds) or ``95.23`` for one seed: the report's format."""
    if len(row['top1']) > 1:
        return f'{row["top1_mean"]:.2f} ± {row["top1_std"]:.2f}'
    return f'{row["top1_mean"]:.2f}'


def results_rows(results, markdown=True):
    """Rows of the results table: (model, init, params, FLOPs, top-1 text, seeds text); DeRy in bold."""
    rows = []
    for r in results['results']:
        label = f'**{r["label"]}**' if markdown and r['kind'] == 'dery' else r['label']
        rows.append((label, r['init'], human(r['params']), human(r['flops']), fmt_top1(r),
                     ', '.join(f'{v:.2f}' for v in r['top1'])))
    return rows


RESULT_COLUMNS = ('model', 'init', 'params', 'FLOPs', 'target top-1 (%)', 'per seed')


def results_table(results):
    """The results table as a rich Table (printed at the end of the demo)."""
    from rich.table import Table
    t = Table(title='DeRy demo: target test top-1 (scikit-learn digits, '
                    f'{results["data"]["target"]["num_train"]} training images)')
    for c in RESULT_COLUMNS:
        t.add_column(c, justify='right' if c in ('params', 'FLOPs', 'target top-1 (%)') else 'left')
    for row, r in zip(results_rows(results, markdown=False), results['results']):
        t.add_row(*row, style='bold' if r['kind'] == 'dery' else None)
    return t


# ---------------------------------------------------------------------------- plots
def plot_curves(results, path):
    """Target test top-1 and training loss against iterations, mean over seeds (band: min-max)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap('tab10')
    for i, row in enumerate(results['results']):
        runs = [results['runs'][n] for n in row['runs']]
        style = dict(color=cmap(i % 10), lw=2.4 if row['kind'] == 'dery' else 1.4,
                     ls='-' if row['kind'] != 'scratch' else '--')
        for ax, key in ((ax1, 'top1'), (ax2, 'loss')):
            curves = [r['curve'][key] for r in runs if r['curve'][key]]
            if not curves:
                continue
            steps = [s for s, _ in curves[0]]
            n = min(len(c) for c in curves)
            vals = [[c[j][1] for c in curves] for j in range(n)]
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(steps[:n], mean, label=row['label'], **style)
            if len(curves) > 1:
                ax.fill_between(steps[:n], [min(v) for v in vals], [max(v) for v in vals], color=style['color'],
                                alpha=0.15)
    ax1.set_xlabel('iteration')
    ax1.set_ylabel('target test top-1 (%)')
    ax1.set_title('fine-tuning on digits: test accuracy')
    ax1.grid(alpha=0.3)
    ax2.set_xlabel('iteration')
    ax2.set_ylabel('training loss')
    ax2.set_title('training loss')
    ax2.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- report
def _md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_report(results, path):
    """``report.md`` from ``results.json``'s dict (every number in it is from that dict)."""
    R = results
    src, tgt = R['data']['source'], R['data']['target']
    asm, part = R['assembly'], R['partition']
    cons = asm['constraints']
    out = ['# DeRy demo: a zoo pre-trained on procedural glyphs, reassembled for handwritten digits', '']
    out.append(f'Generated by `{R["command"]}` in {R["seconds_total"]:.1f} s '
               f'({R["machine"]["cpus"]} CPU cores, {R["machine"]["jobs"]} parallel training jobs of '
               f'{R["machine"]["threads_per_job"]} thread(s)); {R["created"]}.'
               + (' **Quick mode** (reduced schedule, 1 seed): numbers are not meaningful.' if R['quick'] else ''))
    out += ['', '## Tasks', '']
    out.append(f'* **Source** (pre-training the zoo): `{src["type"]}`, {src["num_classes"]} classes of '
               f'procedurally drawn glyphs, {src["num_train"]} training / {src["num_test"]} test images at '
               f'{src["image_size"]}x{src["image_size"]}, seed {src["seed"]}; {src["pretrain_iters"]} iterations '
               f'of batch {src["batch_size"]} per model.')
    colour = (', each in its own random colours with noise (MNIST-M style: the colours must be ignored)'
              if tgt.get('style') == 'colour' else '')
    out.append(f'* **Target**: `{tgt["type"]}`, scikit-learn\'s 8x8 handwritten digits upsampled to '
               f'{tgt["image_size"]}x{tgt["image_size"]} RGB{colour}: {tgt["num_train"]} training images '
               f'({tgt["num_train"] // 10} per class), {tgt["num_test"]} test images (fixed seeded split). '
               f'Every fine-tune: {tgt["finetune_iters"]} iterations of batch {tgt["batch_size"]}, '
               f'{tgt["optimizer"]}, same data, head and schedule; top-1 on the test split after the last '
               'iteration (no model selection on the test split).')
    out += ['', '## Zoo (pre-trained on the source task by this run)', '']
    rows = [(z['name'], z['family'], z['nodes'], human(z['params']), human(z['flops']),
             f'{z["source_top1"]:.2f}', f'{z["pretrain_seconds"]:.1f}' + (' (cached)' if z['cached'] else ''))
            for z in R['zoo']]
    out.append(_md_table(('model', 'family', 'nodes', 'params', 'FLOPs', 'source top-1 (%)', 'pre-training s'),
                         rows))
    out.append('')
    out.append(f'Params and FLOPs (mmengine, multiply-adds, one {tgt["image_size"]}x{tgt["image_size"]} image) '
               'are counted on the whole '
               'classifier for the target task (stem, nodes, output norm, head), as the budget is.')
    out += ['', '## Functional similarity', '']
    out.append(f'{part["similarity"]} between every pair of nodes on {part["probe_samples"]} target training '
               'images (node outputs average-pooled): the summary below; `dery/similarity.npz` holds the matrix.')
    out += ['', f'![similarity heatmap]({R["plots"]["similarity"]})', '']
    out += [f'## Partition (K={part["num_sets"]} equivalence sets, objective {part["objective"]:.4f})', '']
    k = part['num_sets']
    rows = []
    for name, blocks in part['models'].items():
        rows.append([name] + [f'`{b["start"]}`..`{b["end"]}` [{b["start_idx"]}-{b["end_idx"]}] set {b["set"]}'
                              for b in blocks])
    out.append(_md_table(['model'] + [f'block {j}' for j in range(k)], rows))
    out += ['', f'![partition]({R["plots"]["partition"]})', '']
    out += ['## Reassembled network (chosen blocks)', '']
    rows = []
    for j, b in enumerate(asm['blocks']):
        st = asm['stitches'][j - 1] if j > 0 else None
        stitch = '-' if st is None else f'{st["in_family"]}->{st["out_family"]}, {human(st["params"])} params'
        rows.append((j, b['model'], b['family'], f'`{b["start"]}`..`{b["end"]}`', b['set'], human(b['params']),
                     human(b['flops']), stitch))
    out.append(_md_table(('stage', 'model', 'family', 'nodes', 'set', 'params', 'FLOPs', 'stitch in'), rows))
    out.append('')
    (pmin, pmax), (fmin, fmax) = cons['params'], cons['flops']

    def low(v):
        return f' (lower bound {v:,})' if v else ''

    out.append(f'* Params: **{asm["params"]:,}** of a budget of {pmax:,}{low(pmin)} '
               f'({100 * asm["params"] / pmax:.1f}%); the largest zoo model has {R["largest_zoo_params"]:,}.')
    out.append(f'* FLOPs: **{asm["flops"]:,}** of a budget of {fmax:,}{low(fmin)} '
               f'({100 * asm["flops"] / fmax:.1f}%).')
    out.append(f'* Within budget: **{"yes" if asm["within_budget"] else "NO"}**. Proxy {asm["proxy"]["type"]} '
               f'score {asm["proxy"]["score"]:.3f}; solver {asm["solver"]["type"]} ({asm["solver"]["status"]}, '
               f'{asm["solver"]["num_proxy_evals"]} proxy evaluations).')
    out += ['', '## Results on the target task', '']
    seeds = R['seeds']
    out.append('Random init ("scratch") is the libraries\' construction-time init (timm\'s own, PyTorch defaults for '
               'the mmpretrain modules), the same init the zoo models started their pre-training from.')
    out.append('')
    out.append(f'Mean ± sample std over seeds {", ".join(map(str, seeds["dery"]))} for the reassembled model '
               f'and its architecture from scratch, and over seeds {", ".join(map(str, seeds["zoo"]))} for the '
               'zoo models no larger than the reassembled one (the comparison); larger zoo models: seed '
               f'{seeds["zoo"][0]} only. The seed sets the data order, the augmentation and any random init.')
    out.append('')
    out.append(_md_table(RESULT_COLUMNS, results_rows(R)))
    out += ['', '## Targets', '']
    for t in R['targets'].values():
        out.append(f'* {t["text"]}' if t.get('reference') else f'* [{"x" if t["met"] else " "}] {t["text"]}')
    out += ['', '![accuracy curves](' + R['plots']['curves'] + ')', '']
    out += ['## Stage times', '']
    out.append(_md_table(('stage', 'seconds', 'note'),
                         [(s['name'], f'{s["seconds"]:.1f}', s.get('note', '')) for s in R['stages']]))
    out += ['', f'Total: {R["seconds_total"]:.1f} s wall.', '']
    out += ['## Files and reruns', '']
    out.append('`results.json` (every number above), `zoo/*.pth` (pre-trained zoo weights, plain state dicts), '
               '`dery_digits.py` (the DeRy config with those weights), `dery/` (similarity, partition.json, '
               'assembly.json, assembled.py, assembled_init.pth), `pretrain/<model>/` and `runs/<run>/` (one '
               'mmengine work dir per training run: config, log, `vis_data/scalars.json`, last checkpoint).')
    out.append('')
    out.append('The DeRy stages and fine-tune with the normal tools (the partition and assembly above are reused):')
    out.append('')
    out.append('```bash')
    out.append(f'python tools/train.py {R["work_dir"]}/dery_digits.py --work-dir {R["work_dir"]}/dery')
    out.append('```')
    out.append('')
    text = '\n'.join(out)
    with atomic_write(path, 'w') as f:
        f.write(text)
    return text
