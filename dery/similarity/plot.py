"""Heatmaps of similarity results (matplotlib, Agg canvas; no pyplot state).

* ``WORK_DIR/similarity/<a>__<b>.png``: node-by-node matrix of one model pair
  (rows: nodes of ``a``, columns: nodes of ``b``);
* ``WORK_DIR/similarity_summary.png``: the zoo-wide node matrix with model
  boundaries, and a model-by-model summary (mean over the nodes of the row
  model of the best match among the nodes of the column model).
"""
import multiprocessing as mp
import os.path as osp
import signal
import sys

import numpy as np

from dery.utils import atomic_write

from .cache import safe_name


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, tight=True):
    """``tight=False``: the figure's own layout (one draw; ``bbox_inches='tight'`` draws twice)."""
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', bbox_inches='tight' if tight else None)


def _short(name, k=18):
    return name if len(name) <= k else '..' + name[-(k - 2):]


def _limits(mat):
    lo = float(np.nanmin(mat)) if mat.size else 0.0
    return (min(0.0, lo), max(1.0, float(np.nanmax(mat)) if mat.size else 1.0))


def plot_pair(mat, nodes_a, nodes_b, name_a, name_b, metric, path):
    """Heatmap of one ``[len(nodes_a), len(nodes_b)]`` matrix to ``path``."""
    na, nb = mat.shape
    w, h = min(14, 2.5 + 0.28 * nb), min(14, 2.0 + 0.28 * na)
    fig = _figure(w, h)
    # fixed margins in inches (tick labels are at most 18 characters at 6 pt, rotated under the x axis),
    # so the file takes one draw: bbox_inches='tight' would draw it twice (a zoo of 24 models: 300 files)
    fig.subplots_adjust(left=1.2 / w, right=1 - 0.6 / w, bottom=1.1 / h, top=1 - 0.35 / h)
    ax = fig.add_subplot(111)
    vmin, vmax = _limits(mat)
    im = ax.imshow(mat, cmap='viridis', vmin=vmin, vmax=vmax, aspect='auto',
                   interpolation='nearest')
    step_a, step_b = max(1, na // 40), max(1, nb // 40)
    ax.set_yticks(range(0, na, step_a))
    ax.set_yticklabels([_short(n) for n in nodes_a[::step_a]], fontsize=6)
    ax.set_xticks(range(0, nb, step_b))
    ax.set_xticklabels([_short(n) for n in nodes_b[::step_b]], fontsize=6, rotation=90)
    ax.set_ylabel(name_a)
    ax.set_xlabel(name_b)
    ax.set_title(f'{metric}: {name_a} vs {name_b}', fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path, tight=False)


def plot_summary(result, path):
    """Zoo-wide node matrix and model-by-model best-match summary."""
    models = result.models
    full = result.full()
    sizes = [len(result.nodes[m]) for m in models]
    bounds = np.cumsum([0] + sizes)
    M = len(models)
    summary = np.zeros((M, M))
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            summary[i, j] = result.matrices[(a, b)].max(1).mean()
    fig = _figure(16, 7.5)
    ax = fig.add_subplot(121)
    vmin, vmax = _limits(full)
    im = ax.imshow(full, cmap='viridis', vmin=vmin, vmax=vmax, interpolation='nearest')
    for b in bounds[1:-1]:
        ax.axhline(b - 0.5, color='white', lw=0.6)
        ax.axvline(b - 0.5, color='white', lw=0.6)
    centres = (bounds[:-1] + bounds[1:] - 1) / 2
    ax.set_xticks(centres)
    ax.set_xticklabels([_short(m) for m in models], rotation=90, fontsize=7)
    ax.set_yticks(centres)
    ax.set_yticklabels([_short(m) for m in models], fontsize=7)
    ax.set_title(f'{result.type}: all nodes ({full.shape[0]})', fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax2 = fig.add_subplot(122)
    im2 = ax2.imshow(summary, cmap='viridis', vmin=vmin, vmax=vmax, interpolation='nearest')
    ax2.set_xticks(range(M))
    ax2.set_xticklabels([_short(m) for m in models], rotation=90, fontsize=7)
    ax2.set_yticks(range(M))
    ax2.set_yticklabels([_short(m) for m in models], fontsize=7)
    if M <= 16:
        for i in range(M):
            for j in range(M):
                ax2.text(j, i, f'{summary[i, j]:.2f}', ha='center', va='center', fontsize=6,
                         color='white' if summary[i, j] < (vmin + vmax) / 2 else 'black')
    ax2.set_title('mean over row-model nodes of the best column-model match', fontsize=9)
    fig.colorbar(im2, ax=ax2, fraction=0.046, pad=0.04)
    _save(fig, path)


def num_plots(num_models, pairs=True, symmetric=True):
    """How many files :func:`save_plots` writes."""
    m = num_models
    return 1 + (0 if not pairs else m * (m + 1) // 2 if symmetric else m * m)


def save_plots(result, work_dir, pairs=True, symmetric=True, on_file=None, workers=None):
    """Write the summary and (``pairs=True``) one heatmap per model pair.

    Symmetric metrics get one file per unordered pair (``a`` before ``b`` in
    zoo order, self pairs included); others one per ordered pair.
    ``on_file()`` is called after each file (progress bars).
    ``workers``: forked processes drawing the pair heatmaps, on Linux (None:
    the cores this process may use, at most 8; 1: here). matplotlib draws on
    one core, and a zoo of 24 models has 300 pair files.
    Returns the written paths.
    """
    paths = []
    summary = osp.join(work_dir, 'similarity_summary.png')
    plot_summary(result, summary)
    paths.append(summary)
    if on_file is not None:
        on_file()
    if not pairs:
        return paths
    models = result.models
    jobs = [(result.matrices[(a, b)], result.nodes[a], result.nodes[b], a, b, result.type,
             osp.join(work_dir, 'similarity', f'{safe_name(a)}__{safe_name(b)}.png'))
            for i, a in enumerate(models) for j, b in enumerate(models) if not (symmetric and j < i)]
    for p in _draw_all(jobs, workers):
        paths.append(p)
        if on_file is not None:
            on_file()
    return paths


def _pair_job(job):
    plot_pair(*job)
    return job[-1]


def _worker_init():
    # Ctrl-C is the parent's to handle (it stops the pool). SIGTERM keeps its default: a worker turning it
    # into SystemExit runs its exit handlers, which can wait on a pool lock the stopping parent holds
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw_all(jobs, workers):
    """The paths of ``jobs`` as their files are written: in a pool of forked processes when there
    are enough files and cores, on Linux (forked: the workers import nothing), else one after the other."""
    if workers is None:
        from dery.utils.dist import available_cores
        workers = min(8, available_cores())
    workers = min(int(workers), len(jobs) // 8)
    if workers < 2 or not sys.platform.startswith('linux'):  # fork is unsafe on macOS, absent on Windows
        yield from map(_pair_job, jobs)
        return
    pool = mp.get_context('fork').Pool(workers, initializer=_worker_init)
    try:
        yield from pool.imap_unordered(_pair_job, jobs)
        pool.close()  # done: the workers take their stop sentinel and exit on their own
    except BaseException:  # an error, Ctrl-C or a consumer that stopped early: stop the workers now
        pool.terminate()
        raise
    finally:
        pool.join()


__all__ = ['plot_pair', 'plot_summary', 'save_plots', 'num_plots']
