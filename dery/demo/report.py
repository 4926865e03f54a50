"""Stage 6 of the demo: the results (rows, targets), the results table, the plots and ``report.md``.

Every number comes from files the runs wrote: each training run is an
mmengine ``Runner`` whose ``LoggerHook`` writes ``vis_data/scalars.json``
(losses and ``accuracy/top1`` at each validation,
:func:`dery.demo.jobs.read_scalars`); :func:`collect_results` gathers them
into ``results.json``'s dict, and :func:`write_report` renders ``report.md``
from that dict alone.
"""
import math
import os.path as osp
import time

__all__ = ['PLOTS', 'collect_results', 'mean_std', 'fmt_top1', 'results_rows', 'results_table', 'plot_curves',
           'write_report', 'print_summary']

PLOTS = dict(similarity='dery/similarity_summary.png', partition='dery/partition.png', curves='accuracy_curves.png')


# ---------------------------------------------------------------------------- results
def result_rows(ft):
    """One row per compared model (reassembled, its architecture from scratch, each zoo model) with the
    top-1 of its runs, their mean and sample std."""
    rows = [dict(label='DeRy (reassembled)', kind='dery', init='zoo blocks + fitted stitches',
                 params=ft.params, flops=ft.flops, runs=ft.dery_names),
            dict(label='DeRy architecture, random init', kind='scratch', init='random (scratch)',
                 params=ft.params, flops=ft.flops, runs=ft.scratch_names)] + ft.zoo_rows
    for r in rows:
        r['top1'] = [ft.runs[n]['top1'] for n in r['runs']]
        r['top1_mean'], r['top1_std'] = mean_std(r['top1'])
    return rows


def within_budget(constraints, params, flops):
    (pmin, pmax), (fmin, fmax) = constraints['params'], constraints['flops']
    return ((pmin is None or params >= pmin) and (pmax is None or params <= pmax)
            and (fmin is None or flops >= fmin) and (fmax is None or flops <= fmax))


def _limits(lo, hi):
    return f'[{"-" if lo is None else f"{lo:,}"}, {"-" if hi is None else f"{hi:,}"}]'


def demo_targets(rows, constraints, within, n_seeds):
    """What the demo sets out to show, each ``dict(met, text)`` (``reference``: shown, not a target)."""
    dery_row, scratch_row, zoo_rows = rows[0], rows[1], rows[2:]
    dery_params, dery_flops = dery_row['params'], dery_row['flops']
    (pmin, pmax), (fmin, fmax) = constraints['params'], constraints['flops']
    no_larger = [r for r in zoo_rows if r['params'] <= dery_params]
    best_zoo = max(no_larger, key=lambda r: r['top1_mean']) if no_larger else None
    return dict(
        beats_scratch=dict(
            met=dery_row['top1_mean'] > scratch_row['top1_mean'],
            text=f'Reassembled beats the same architecture from scratch: {dery_row["top1_mean"]:.2f} vs '
                 f'{scratch_row["top1_mean"]:.2f} (mean of {n_seeds} seed(s), '
                 f'{dery_row["top1_mean"] - scratch_row["top1_mean"]:+.2f} points).'),
        matches_zoo=dict(
            met=bool(within and (best_zoo is None or dery_row['top1_mean'] >= best_zoo['top1_mean'])),
            text=('Reassembled is {} budget ({:,} params, limits {}; {:,} FLOPs, limits {}) and at least '
                  'matches the best zoo model of no larger size fine-tuned the same way: {}.').format(
                      'within' if within else 'OUTSIDE the', dery_params, _limits(pmin, pmax), dery_flops,
                      _limits(fmin, fmax),
                      'no zoo model is that small' if best_zoo is None else
                      f'{dery_row["top1_mean"]:.2f} vs {best_zoo["model"]} ({best_zoo["params"]:,} params) '
                      f'{best_zoo["top1_mean"]:.2f} ({dery_row["top1_mean"] - best_zoo["top1_mean"]:+.2f})')),
        best_overall=dict(
            reference=True, met=dery_row['top1_mean'] >= max(r['top1_mean'] for r in zoo_rows),
            text='For reference, against every zoo model (also larger ones): best '
                 f'{max(zoo_rows, key=lambda r: r["top1_mean"])["model"]} '
                 f'{max(r["top1_mean"] for r in zoo_rows):.2f} vs reassembled {dery_row["top1_mean"]:.2f}.'))


def partition_blocks(part):
    """``{model: [dict(start, end, set, start_idx, end_idx)]}`` from ``partition.json``'s dict."""
    blocks = {}
    for name, info in part['models'].items():
        nodes = info['nodes']
        blocks[name] = [dict(start=b['start'], end=b['end'], set=b['set'], start_idx=nodes.index(b['start']),
                             end_idx=nodes.index(b['end'])) for b in info['blocks']]
    return blocks


def collect_results(*, command, quick, work_dir, machine, data_info, zoo, part, record, ft, demo, dery_cfg,
                    stages):
    """``results.json``'s dict: the run, data, zoo, partition, assembly, every run, the rows and targets."""
    from dery.utils import load_json, to_plain
    rows = result_rows(ft)
    constraints = to_plain(dery_cfg.constraints)
    within = within_budget(constraints, ft.params, ft.flops)
    rel = osp.relpath(work_dir)
    probe = load_json(osp.join(dery_cfg.work_dir, 'similarity.json'), 'similarity file')['meta']['probe']
    return dict(
        command=command, created=time.strftime('%Y-%m-%d %H:%M:%S'), quick=bool(quick),
        work_dir=rel if not rel.startswith('..') else work_dir, machine=machine,
        data=data_info, zoo=zoo.info, largest_zoo_params=max(ft.zoo_rows, key=lambda r: r['params'])['params'],
        partition=dict(num_sets=part['num_sets'], objective=part['objective'], similarity=part.get('similarity'),
                       models=partition_blocks(part), probe_samples=probe['num_samples']),
        assembly=dict(blocks=record['blocks'], stitches=[s for s in record['stitches']], params=record['params'],
                      flops=record['flops'], constraints=record['constraints'], proxy=record['proxy'],
                      solver={k: v for k, v in record['solver'].items() if k != 'info'}, within_budget=within,
                      measured_params=ft.params, measured_flops=ft.flops),
        seeds=dict(dery=list(demo.seeds), zoo=list(demo.zoo_seeds)),
        runs=ft.runs, results=rows, targets=demo_targets(rows, constraints, within, len(demo.seeds)),
        plots=dict(PLOTS), stages=stages)


def mean_std(values):
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    values = [float(v) for v in values]
    if not values:
        return float('nan'), float('nan')
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m)**2 for v in values) / (len(values) - 1))


# ---------------------------------------------------------------------------- formatting
def fmt_top1(row):
    """``95.23 ± 0.41`` (sample std over seeds) or ``95.23`` for one seed: the report's format."""
    if len(row['top1']) > 1:
        return f'{row["top1_mean"]:.2f} ± {row["top1_std"]:.2f}'
    return f'{row["top1_mean"]:.2f}'


def results_rows(results, markdown=True):
    """Rows of the results table: (model, init, params, FLOPs, top-1 text, seeds text); DeRy in bold."""
    from dery.utils import human
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

    from dery.utils import atomic_write
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
    from dery.utils import atomic_write, human
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


def print_summary(console, results, report_path):
    """The results table, each target (MET / MISSED / NOTE) and where the report is."""
    console.print(results_table(results))
    for t in results['targets'].values():
        tag = 'NOTE  ' if t.get('reference') else ('[green]MET[/green]   ' if t['met'] else '[red]MISSED[/red] ')
        console.print(tag + t['text'])
    console.print(f'Report: {report_path}  (total {results["seconds_total"]:.1f} s)')
