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
    """One row per compared model (reassembled, its architecture from scratch, the best cross-family
    assembly of the calibration, each zoo model) with the top-1 of its runs, their mean and sample std."""
    rows = [dict(label='DeRy (reassembled)', kind='dery', init='zoo blocks + fitted stitches',
                 params=ft.params, flops=ft.flops, runs=ft.dery_names),
            dict(label='DeRy architecture, random init', kind='scratch', init='random (scratch)',
                 params=ft.params, flops=ft.flops, runs=ft.scratch_names)]
    if ft.cross is not None:
        s = ft.cross['sample']
        rows.append(dict(label=f'best cross-family assembly ({"+".join(s.families)})', kind='cross',
                         init='zoo blocks + fitted stitches', params=s.params, flops=s.flops, runs=ft.cross_names,
                         assembly=s.name,
                         families=s.families, blocks=s.blocks))
    rows += ft.zoo_rows
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


#: the source top-1 every zoo model reaches at least, for the comparison to be fair
MIN_SOURCE_TOP1 = 60.0


def demo_targets(rows, constraints, within, n_seeds, zoo_info=(), cross=None):
    """What the demo sets out to show, each ``dict(met, text)`` (``reference``: shown, not a target)."""
    dery_row, scratch_row = rows[0], rows[1]
    zoo_rows = [r for r in rows if r['kind'] == 'zoo']
    dery_params, dery_flops = dery_row['params'], dery_row['flops']
    (pmin, pmax), (fmin, fmax) = constraints['params'], constraints['flops']
    no_larger = [r for r in zoo_rows if r['params'] <= dery_params]
    best_zoo = max(no_larger, key=lambda r: r['top1_mean']) if no_larger else None
    out = dict(
        zoo_pretrained=dict(
            met=bool(zoo_info) and all(z['source_top1'] >= MIN_SOURCE_TOP1 for z in zoo_info),
            text=f'Every zoo model is reasonably pre-trained (source top-1 >= {MIN_SOURCE_TOP1:.0f}%): '
                 + ', '.join(f'{z["name"]} {z["source_top1"]:.1f}%' for z in zoo_info) + '.'),
        beats_scratch=dict(
            met=dery_row['top1_mean'] > scratch_row['top1_mean'],
            text=f'Reassembled beats the same architecture from scratch: {dery_row["top1_mean"]:.2f} vs '
                 f'{scratch_row["top1_mean"]:.2f} (mean of {n_seeds} seed(s), '
                 f'{dery_row["top1_mean"] - scratch_row["top1_mean"]:+.2f} points).'),
        matches_zoo=dict(
            met=bool(within and (best_zoo is None or dery_row['top1_mean'] > best_zoo['top1_mean'])),
            text=('Reassembled is {} budget ({:,} params, limits {}; {:,} FLOPs, limits {}) and beats every zoo '
                  'model of no more params, fine-tuned the same way ({} seeds each): {}.').format(
                      'within' if within else 'OUTSIDE the', dery_params, _limits(pmin, pmax), dery_flops,
                      _limits(fmin, fmax), n_seeds,
                      'no zoo model is that small' if best_zoo is None else
                      f'{dery_row["top1_mean"]:.2f} vs the best of them, {best_zoo["model"]} '
                      f'({best_zoo["params"]:,} params) {best_zoo["top1_mean"]:.2f} '
                      f'({dery_row["top1_mean"] - best_zoo["top1_mean"]:+.2f})')),
        best_overall=dict(
            reference=True, met=dery_row['top1_mean'] >= max(r['top1_mean'] for r in zoo_rows),
            text='For reference, against every zoo model (also larger ones): best '
                 f'{max(zoo_rows, key=lambda r: r["top1_mean"])["model"]} '
                 f'{max(r["top1_mean"] for r in zoo_rows):.2f} vs reassembled {dery_row["top1_mean"]:.2f}.'))
    cross_row = next((r for r in rows if r['kind'] == 'cross'), None)
    if cross_row is not None:
        smaller = [r for r in zoo_rows if r['params'] <= cross_row['params']]
        best_small = max(smaller, key=lambda r: r['top1_mean']) if smaller else None
        vs = ('no zoo model is that small' if best_small is None else
              f'the best zoo model of no more params, {best_small["model"]}, {best_small["top1_mean"]:.2f} '
              f'({cross_row["top1_mean"] - best_small["top1_mean"]:+.2f})')
        out['cross_family'] = dict(
            reference=True, met=best_small is None or cross_row['top1_mean'] > best_small['top1_mean'],
            text=f'Best cross-family assembly ({" + ".join(cross_row["families"])}: `{cross_row["assembly"]}`, '
                 f'{cross_row["params"]:,} params; picked by its calibration run, seed-0 top-1 '
                 f'{cross["selection_top1"]:.2f}, then fine-tuned with fresh seeds): '
                 f'{cross_row["top1_mean"]:.2f} vs {vs}; the solver\'s choice {dery_row["top1_mean"]:.2f}.')
    return out


def partition_blocks(part):
    """``{model: [dict(start, end, set, start_idx, end_idx)]}`` from ``partition.json``'s dict."""
    blocks = {}
    for name, info in part['models'].items():
        nodes = info['nodes']
        blocks[name] = [dict(start=b['start'], end=b['end'], set=b['set'], start_idx=nodes.index(b['start']),
                             end_idx=nodes.index(b['end'])) for b in info['blocks']]
    return blocks


def calibration_summary(records, combined, assembly_proxy, root):
    """``results.json``'s calibration: per task the agreement table (and where its files are), the
    tasks side by side, the proxy they choose and the one the solver used."""
    tasks = {}
    for task, rec in records.items():
        out_dir = osp.join(rec['work_dir'], 'calibration')
        rel = osp.relpath(out_dir, root)
        tasks[task] = dict(dir=rel, markdown=osp.join(rel, 'calibration.md'), plot=osp.join(rel, 'scatter_all.png'),
                           record=rec)
    return dict(tasks=tasks, combined=combined, chosen=combined['chosen'], used=assembly_proxy)


def collect_results(*, command, quick, work_dir, machine, data_info, zoo, part, record, ft, demo, dery_cfg,
                    stages, calibration=None, combined=None, calib_seconds=None):
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
        seeds=dict(all=list(demo.seeds), cross_family=list(demo.cross_family_seeds)),
        runs=ft.runs, results=rows,
        targets=demo_targets(rows, constraints, within, len(demo.seeds), zoo.info, ft.cross),
        cross_family=None if ft.cross is None else dict(
            assembly=ft.cross['sample'].name, selection_top1=ft.cross['selection_top1'],
            selection_seeds=ft.cross['selection_seeds'], seeds=list(demo.cross_family_seeds)),
        calibration=None if calibration is None else dict(
            calibration_summary(calibration, combined, record['proxy'], work_dir), seconds_prepare=calib_seconds),
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


def _recipe_text(recipe):
    if not recipe:
        return '-'
    return f'{recipe["iters"]} it, lr {recipe["lr"]:g}, warm-up {recipe["warmup"]}'


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
               f'{src["image_size"]}x{src["image_size"]}, seed {src["seed"]}; batch {src["batch_size"]}, one '
               'recipe per family (iterations, peak lr and warm-up in the zoo table below).')
    colour = (', each in its own random colours with noise (MNIST-M style: the colours must be ignored)'
              if tgt.get('style') == 'colour' else '')
    out.append(f'* **Target**: `{tgt["type"]}`, scikit-learn\'s 8x8 handwritten digits upsampled to '
               f'{tgt["image_size"]}x{tgt["image_size"]} RGB{colour}: {tgt["num_train"]} training images '
               f'({tgt["num_train"] // 10} per class), {tgt["num_test"]} test images (fixed seeded split). '
               f'Every fine-tune: {tgt["finetune_iters"]} iterations of batch {tgt["batch_size"]}, '
               f'{tgt["optimizer"]}, same data, head and schedule; top-1 on the test split after the last '
               'iteration (no model selection on the test split).')
    for t in R['data'].get('tasks', []):
        out.append(f'* **Second target task** (`{t["name"]}.py`, for the proxy calibration only): `{t["type"]}`, '
                   f'{t["num_classes"]} classes (4 shapes x outlined/filled: a factorised label), '
                   f'{t["num_train"]} training / {t["num_test"]} test images at {t["image_size"]}x{t["image_size"]}, '
                   'the same zoo, budget and fine-tuning schedule.')
    out += ['', '## Zoo (pre-trained on the source task by this run)', '']
    rows = [(z['name'], z['family'], z['nodes'], human(z['params']), human(z['flops']),
             _recipe_text(z.get('recipe')), f'{z["source_top1"]:.2f}',
             f'{z["pretrain_seconds"]:.1f}' + (' (cached)' if z['cached'] else '')) for z in R['zoo']]
    out.append(_md_table(('model', 'family', 'nodes', 'params', 'FLOPs', 'recipe (iterations, peak lr, warm-up)',
                          'source top-1 (%)', 'pre-training s'), rows))
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
    out.append(f'Mean ± sample std over seeds {", ".join(map(str, seeds["all"]))} for every model (the '
               'reassembled one, its architecture from scratch, every zoo model); the seed sets the data order, '
               'the augmentation and any random init.')
    if R.get('cross_family'):
        cf = R['cross_family']
        out.append(f'The best cross-family assembly is the calibration\'s assembly (below) of more than one family '
                   f'with the highest top-1 of its seed-{"/".join(map(str, cf["selection_seeds"]))} run '
                   f'(`{cf["assembly"]}`, {cf["selection_top1"]:.2f}), fine-tuned again with fresh seeds '
                   f'{", ".join(map(str, cf["seeds"]))} (the seed that picked it is not counted); it shows what '
                   'mixing families reaches, it is not what the solver returns.')
    out.append('')
    out.append(_md_table(RESULT_COLUMNS, results_rows(R)))
    out += ['', '## Targets', '']
    for t in R['targets'].values():
        out.append(f'* {t["text"]}' if t.get('reference') else f'* [{"x" if t["met"] else " "}] {t["text"]}')
    out += ['', '![accuracy curves](' + R['plots']['curves'] + ')', '']
    if R.get('calibration'):
        out += calibration_section(R)
    out += ['## Stage times', '']
    out.append(_md_table(('stage', 'seconds', 'note'),
                         [(s['name'], f'{s["seconds"]:.1f}', s.get('note', '')) for s in R['stages']]))
    out += ['', f'Total: {R["seconds_total"]:.1f} s wall.', '']
    out += ['## Files and reruns', '']
    out.append('`results.json` (every number above), `zoo/*.pth` (pre-trained zoo weights, plain state dicts), '
               '`dery_digits.py` and `dery_shapes.py` (the DeRy configs with those weights), `dery/` and '
               '`dery_shapes/` (similarity, partition.json, assembly.json, assembled.py, assembled_init.pth, and '
               '`calibration/`: calibration.md, calibration.json, scatter PNGs, the runs), `pretrain/<model>/` and '
               '`runs/<run>/` (one mmengine work dir per training run: config, log, `vis_data/scalars.json`, last '
               'checkpoint).')
    out.append('')
    out.append('The DeRy stages and fine-tune with the normal tools (the partition and assembly above are reused):')
    out.append('')
    out.append('```bash')
    out.append(f'python tools/train.py {R["work_dir"]}/dery_digits.py --work-dir {R["work_dir"]}/dery')
    out.append('```')
    if R.get('calibration'):
        out.append('')
        out.append('The proxy calibration alone (its finished fine-tunes are reused; `--seeds 0 1 2` adds seeds, '
                   '`--num-samples` more assemblies):')
        out.append('')
        out.append('```bash')
        cfgs = ' '.join(f'{R["work_dir"]}/{c}' for c in ['dery_digits.py'] + [f'{t["name"]}.py' for t in
                                                                            R['data'].get('tasks', [])])
        out.append(f'python tools/analysis_tools/proxy_calibration.py {cfgs}')
        out.append('```')
    out.append('')
    text = '\n'.join(out)
    with atomic_write(path, 'w') as f:
        f.write(text)
    return text


def calibration_section(R):
    """The report's calibration section: per task the agreement table and scatter plots, both tasks side by
    side, the proxy the solver used and why."""
    from dery.calibration.report import AGREEMENT_COLUMNS, agreement_rows, combined_markdown, describe
    C = R['calibration']
    asm = R['assembly']
    used, chosen, comb = C['used']['type'], C['chosen'], C['combined']
    solver = asm['solver']
    out = ['## Proxy calibration: which proxy picks the network', '']
    out.append(f'The solver ({solver["type"]}) enumerates the top-{solver["num_proxy_evals"]} assemblies of its '
               'integer program (exact budget, a per-block surrogate objective) and returns the one the whole-model '
               'proxy scores highest: the proxy decides the answer. How well does each proxy rank networks by what '
               'they reach after fine-tuning? Per task: ' + describe(next(iter(C['tasks'].values()))['record']))
    out.append('')
    for k, (task, t) in enumerate(C['tasks'].items()):
        rec = t['record']
        title = 'the demo\'s target' if k == 0 else 'the second task'
        out += [f'### {task} ({title}; {rec["num_samples"]} assemblies)', '']
        out.append(_md_table(AGREEMENT_COLUMNS, agreement_rows(rec)))
        out.append('')
        chosen_s = next((s for s in rec['samples'] if s['source'] == 'solver'), None)
        best = next((s for s in rec['samples'] if s['name'] == rec.get('best_ranked')), None)
        top = max(rec['samples'], key=lambda s: s['top1_mean'])
        if chosen_s is not None and best is not None:
            out.append(f'The solver\'s answer with {rec["proxy"].get("type")}: `{chosen_s["name"]}` '
                       f'({chosen_s["top1_mean"]:.2f}); the best of its top-M: `{best["name"]}` '
                       f'({best["top1_mean"]:.2f}); the best sampled: `{top["name"]}` ({top["top1_mean"]:.2f}). '
                       f'Every assembly, score and run: [{t["markdown"]}]({t["markdown"]}).')
            out.append('')
        out += [f'![calibration {task}]({t["plot"]})', '']
    if len(C['tasks']) > 1:
        out += ['### Both tasks', '']
        out.append(combined_markdown(comb))
        out.append('')
    why = (f'**The solver used {used}** (`proxy` of configs/demo/dery_digits.py, also the second task\'s). '
           f'It is the config\'s default because the calibration measured it best: {comb["rule"]}. ')
    if chosen is None:
        why += 'This run\'s calibration could not rank the proxies (too few assemblies).'
    elif chosen == used:
        row = next(r for r in comb['rows'] if r['proxy'] == chosen)
        why += (f'This run\'s calibration agrees: {chosen} has the highest mean tau ({row["mean"]:+.2f}; worst task '
                f'{row["worst"]:+.2f}).')
    else:
        row = next(r for r in comb['rows'] if r['proxy'] == chosen)
        urow = next((r for r in comb['rows'] if r['proxy'] == used), None)
        why += (f'This run\'s calibration ranks {chosen} first (mean tau {row["mean"]:+.2f}'
                + (f', {used} {urow["mean"]:+.2f}' if urow else '') + f'): to follow it, set proxy.type=\'{chosen}\' '
                'in configs/demo/dery_digits.py.')
    out += [why, '']
    return out


def print_summary(console, results, report_path):
    """The results table, each target (MET / MISSED / NOTE) and where the report is."""
    console.print(results_table(results))
    for t in results['targets'].values():
        tag = 'NOTE  ' if t.get('reference') else ('[green]MET[/green]   ' if t['met'] else '[red]MISSED[/red] ')
        console.print(tag + t['text'])
    C = results.get('calibration')
    if C:
        parts = []
        for r in C['combined']['rows'][:3]:
            parts.append(f'{r["proxy"]} ' + '/'.join(f'{p["tau"]:+.2f}' for p in r['per_task']))
        console.print(f'NOTE  Proxy calibration (Kendall tau, {" / ".join(C["combined"]["tasks"])}): '
                      + ', '.join(parts) + f'; best: {C["chosen"]}, the solver used {C["used"]["type"]}.')
    console.print(f'Report: {report_path}  (total {results["seconds_total"]:.1f} s)')
