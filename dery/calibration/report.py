"""The calibration's outputs: ``calibration.md`` (and the tables other reports reuse), scatter PNGs, and
the comparison of several tasks (:func:`combine`)."""
import math
import os.path as osp

__all__ = ['agreement_rows', 'write_markdown', 'plot_scatters', 'combine', 'combined_markdown', 'fmt_ci',
           'md_table', 'GRID_PLOT']

GRID_PLOT = 'scatter_all.png'


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_ci(value, ci):
    """``0.42 [0.10, 0.71]``; ``-`` when undefined."""
    if not _finite(value):
        return '-'
    lo, hi = ci if ci else (float('nan'), float('nan'))
    return f'{value:+.2f} [{lo:+.2f}, {hi:+.2f}]' if _finite(lo) and _finite(hi) else f'{value:+.2f}'


def _fmt_score(v):
    if v is None:
        return 'fail'
    a = abs(v)
    return f'{v:.3g}' if a and (a >= 1e4 or a < 1e-2) else f'{v:.3f}' if a < 100 else f'{v:.1f}'


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


AGREEMENT_COLUMNS = ('proxy', "Kendall's tau [95% CI]", "Spearman's rho [95% CI]", "tau within the solver's top-M",
                     "pick among the solver's top-M: top-1 (regret)", 's / network', 'failed')


def ordered_proxies(record):
    """Proxy labels, best Kendall tau first (undefined last)."""
    table = record['proxies']
    return sorted(table, key=lambda k: (-table[k]['tau'] if _finite(table[k]['tau']) else math.inf, k))


def agreement_rows(record):
    rows = []
    for label in ordered_proxies(record):
        t = record['proxies'][label]
        pick = t.get('pick_top_m')
        if not pick:
            pick_text = '-'
        elif pick['regret'] > 0:
            pick_text = f'{pick["top1"]:.2f} (-{pick["regret"]:.2f})'
        else:
            pick_text = f'{pick["top1"]:.2f} (best)'
        sec = t.get('seconds')
        top = t.get('top_m') or {}
        rows.append((label, fmt_ci(t['tau'], t['tau_ci']), fmt_ci(t['rho'], t['rho_ci']),
                     fmt_ci(top.get('tau'), top.get('tau_ci')), pick_text,
                     '-' if sec is None else f'{sec:.2f}', t.get('failed', 0)))
    return rows


def _sources(record):
    n = dict(solver=0, top=0, random=0)
    for s in record['samples']:
        n['solver' if s['source'] == 'solver' else 'top' if s['source'] == 'top-M' else 'random'] += 1
    return n


def describe(record):
    """One paragraph: what was sampled, trained and measured."""
    n = _sources(record)
    sch = record['schedule']
    seeds = ', '.join(map(str, sch['seeds']))
    p = record['proxy']
    opts = record['options']
    cross = sum(s['cross_family'] for s in record['samples'])
    return (f'{record["num_samples"]} feasible assemblies of the partition ({n["solver"] + n["top"]} ranked by the '
            f'solver, its answer included; {n["random"]} drawn uniformly among the other feasible ones, seed '
            f'{opts["seed"]}; {cross} mix families), each built as the assembly stage builds it (zoo blocks, '
            f'stitches fitted by least squares) and scored by every proxy on the same '
            f'{p.get("num_batches")} x {p.get("batch_size")} target images (proxy seed {p.get("seed")}), then '
            f'fine-tuned with the config\'s schedule ({sch["max_iters"]} iterations, seed(s) {seeds}; top-1 on '
            f'the test split after the last iteration). Kendall\'s tau-b and Spearman\'s rho between each '
            f'proxy\'s score and the fine-tuned top-1 (mean over seeds), with {int(100 * opts["level"])}% '
            f'percentile bootstrap intervals ({opts["num_bootstrap"]} resamples of the assemblies); the same tau '
            'within the solver\'s top-M only (the candidates the proxy re-ranks). "Pick": the top-1 of the assembly the '
            'proxy ranks first among the solver\'s top-M (what the solver would return with that proxy) and how '
            'far it is below the best of them.')


def write_markdown(record, path):
    """``calibration.md`` of one task."""
    from dery.utils import atomic_write, human
    out = [f'# Proxy calibration: {record["task"]}', '']
    out.append(describe(record))
    out += ['', md_table(AGREEMENT_COLUMNS, agreement_rows(record)), '']
    best = next((s for s in record['samples'] if s['name'] == record.get('best_ranked')), None)
    chosen = next((s for s in record['samples'] if s['source'] == 'solver'), None)
    if chosen is not None:
        out.append(f'The solver\'s answer (proxy {record["proxy"].get("type")}): `{chosen["name"]}`, top-1 '
                   f'{chosen["top1_mean"]:.2f}; the best of its top-M: `{best["name"]}`, {best["top1_mean"]:.2f}.')
        out.append('')
    if record.get('plots'):
        out += [f'![scatter]({GRID_PLOT})', '']
    labels = list(record['proxies'])
    out += ['## Assemblies', '']
    rows = []
    for s in sorted(record['samples'], key=lambda s: -s['top1_mean']):
        rows.append([f'`{s["name"]}`', s['source'] + (f' #{s["ilp_rank"] + 1}' if s['ilp_rank'] is not None else ''),
                     '+'.join(s['families']), human(s['params']), human(s['flops']),
                     ', '.join(f'{v:.2f}' for v in s['top1']), f'{s["top1_mean"]:.2f}']
                    + [_fmt_score(s['scores'].get(k)) for k in labels])
    out.append(md_table(['assembly', 'source', 'families', 'params', 'FLOPs', 'top-1 per seed', 'top-1']
                        + labels, rows))
    errors = [(s['name'], k, e) for s in record['samples'] for k, e in s['errors'].items()]
    if errors:
        out += ['', 'Proxies that failed on a network (left out of its correlations):', '']
        out += [f'* {k} on `{n}`: {e}' for n, k, e in errors]
    out.append('')
    text = '\n'.join(out)
    with atomic_write(path, 'w') as f:
        f.write(text)
    return text


def _scatter(ax, record, label):
    t = record['proxies'][label]
    styles = dict(solver=dict(marker='*', s=160), **{'top-M': dict(marker='o', s=46), 'random': dict(marker='^', s=46)})
    for s in record['samples']:
        v = s['scores'].get(label)
        if v is None:
            continue
        colour = '#d62728' if s['cross_family'] else '#1f77b4'
        st = styles[s['source']]
        ax.scatter([v], [s['top1_mean']], c=colour, edgecolors='k', linewidths=0.6, zorder=3, **st)
        if len(s['top1']) > 1:
            ax.plot([v, v], [min(s['top1']), max(s['top1'])], c=colour, lw=1, zorder=2)
    ax.set_title(f'{label}: tau {fmt_ci(t["tau"], t["tau_ci"])}\nrho {fmt_ci(t["rho"], t["rho_ci"])}', fontsize=8)
    ax.set_xlabel('proxy score', fontsize=8)
    ax.set_ylabel('fine-tuned top-1 (%)', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _legend(fig_or_ax, **kw):
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker='*', ls='', c='grey', ms=11, label="solver's answer"),
               Line2D([], [], marker='o', ls='', c='grey', ms=6, label="solver's top-M"),
               Line2D([], [], marker='^', ls='', c='grey', ms=6, label='random feasible'),
               Line2D([], [], marker='s', ls='', c='#1f77b4', ms=6, label='one family'),
               Line2D([], [], marker='s', ls='', c='#d62728', ms=6, label='across families')]
    fig_or_ax.legend(handles=handles, fontsize=7, **(kw or dict(loc='best')))


def plot_scatters(record, out_dir):
    """``scatter_<proxy>.png`` per proxy and ``scatter_all.png`` (all proxies, best tau first)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from dery.utils import atomic_write
    paths = []
    fig = plt.figure(figsize=(4.6, 3.8))  # one figure for every proxy: creating figures is slow
    for label, fname in record['plots'].items():
        fig.clf()
        ax = fig.add_subplot(1, 1, 1)
        _scatter(ax, record, label)
        _legend(ax)
        fig.suptitle(record['task'], fontsize=9)
        fig.tight_layout()
        path = osp.join(out_dir, fname)
        with atomic_write(path, 'wb') as f:
            fig.savefig(f, format='png', dpi=100)
        paths.append(path)
    plt.close(fig)
    labels = ordered_proxies(record)
    cols = min(5, len(labels))
    rows = int(math.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax, label in zip(axes.ravel(), labels):
        _scatter(ax, record, label)
    for ax in axes.ravel()[len(labels):]:
        ax.axis('off')
    _legend(fig, loc='lower center', ncol=5, frameon=False)
    fig.suptitle(f'proxy score vs fine-tuned top-1: {record["task"]} ({record["num_samples"]} assemblies)',
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    path = osp.join(out_dir, GRID_PLOT)
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=90)
    plt.close(fig)
    return paths + [path]


# ---------------------------------------------------------------------------- several tasks
def combine(records, metric='tau'):
    """The proxies of several tasks side by side and the one to use: ``dict(tasks, rows, chosen, rule)``;
    ``rows``: per proxy its tau and rho per task, the mean over tasks and the worst task, sorted by the
    mean ``metric`` (ties: the better worst task). Proxies undefined on a task rank last."""
    tasks = [r['task'] for r in records]
    labels = [k for k in records[0]['proxies'] if all(k in r['proxies'] for r in records)]
    rows = []
    for label in labels:
        per = [r['proxies'][label] for r in records]
        vals = [p[metric] for p in per]
        ok = all(_finite(v) for v in vals)
        rows.append(dict(proxy=label, per_task=[dict(task=t, tau=p['tau'], tau_ci=p['tau_ci'], rho=p['rho'],
                                                     rho_ci=p['rho_ci'], pick_top_m=p.get('pick_top_m'))
                                                for t, p in zip(tasks, per)],
                         mean=sum(vals) / len(vals) if ok else float('nan'),
                         worst=min(vals) if ok else float('nan'),
                         mean_rho=sum(p['rho'] for p in per) / len(per) if all(_finite(p['rho']) for p in per)
                         else float('nan')))
    rows.sort(key=lambda r: (-(r['mean'] if _finite(r['mean']) else -math.inf),
                             -(r['worst'] if _finite(r['worst']) else -math.inf), r['proxy']))
    chosen = rows[0]['proxy'] if rows and _finite(rows[0]['mean']) else None
    rule = (f"the highest mean Kendall's tau over the {len(tasks)} task(s) ({', '.join(tasks)}); ties: the "
            'higher worst-task tau')
    return dict(tasks=tasks, metric=metric, rows=rows, chosen=chosen, rule=rule)


def combined_markdown(combined):
    """The table of :func:`combine`: tau and rho per task, the mean and worst tau."""
    header = ['proxy'] + [f'tau {t}' for t in combined['tasks']] + [f'rho {t}' for t in combined['tasks']] + \
        ['mean tau', 'worst tau', 'mean rho']
    rows = []
    for r in combined['rows']:
        name = f'**{r["proxy"]}**' if r['proxy'] == combined['chosen'] else r['proxy']
        rows.append([name] + [fmt_ci(p['tau'], p['tau_ci']) for p in r['per_task']]
                    + [fmt_ci(p['rho'], p['rho_ci']) for p in r['per_task']]
                    + [f'{r["mean"]:+.2f}' if _finite(r['mean']) else '-',
                       f'{r["worst"]:+.2f}' if _finite(r['worst']) else '-',
                       f'{r["mean_rho"]:+.2f}' if _finite(r['mean_rho']) else '-'])
    return md_table(header, rows)
