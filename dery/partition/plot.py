"""PNG of a partition: each model a horizontal bar cut into blocks coloured by set."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dery.utils import atomic_write  # noqa: E402


def plot_partition(partition, path, title=None):
    """``partition``: a :class:`~dery.partition.Partition` (or its JSON dict)."""
    from .record import Partition
    partition = Partition.from_json(partition)
    models = list(partition.models)
    k = partition.num_sets
    cmap = plt.get_cmap('tab10' if k <= 10 else 'tab20')
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(models) + 1.4))
    for row, name in enumerate(models):
        info = partition.models[name]
        n = len(info.nodes)
        for block in info.blocks:
            s, e = block.start_index, block.end_index
            left, width = s / n, (e - s + 1) / n
            ax.barh(row, width, left=left, color=cmap(block.set % cmap.N), edgecolor='white')
            ax.text(left + width / 2, row, f'{e - s + 1}', ha='center', va='center', fontsize=7)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels([f'{m} ({len(partition.models[m].nodes)})' for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel('relative depth (numbers: nodes per block)')
    ax.legend(handles=[Patch(color=cmap(s % cmap.N), label=f'set {s}') for s in range(k)],
              loc='upper center', bbox_to_anchor=(0.5, -0.25 if len(models) < 6 else -0.08), ncol=k,
              fontsize=8)
    ax.set_title(title or f'DeRy partition: {len(models)} models, K={k}, '
                 f'objective {partition.objective or 0:.3f}')
    fig.tight_layout()
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=120)
    plt.close(fig)
    return path
