"""Show how DeRy cuts zoo models into nodes (offline: random-init weights).

    python tools/dissect.py [MODEL ...] [--input-size 224] [--detail NAME] [--zoo model_zoo.yml]

Builds each named zoo model without weights, derives its node list from the
model structure, checks that stem + cuts reproduce the last node exactly, and
prints a summary table plus the per-node table of one model.
"""
import argparse
import os
import time

from dery.cli import run

DEFAULT = ['resnet50_in1k', 'vit_small_mocov3', 'swin_tiny_in1k', 'regnety_800mf', 'mobilenetv3_large']


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='*', default=DEFAULT, help='zoo names (default: a few families)')
    p.add_argument('--input-size', type=int, default=224, help='probe image size')
    p.add_argument('--detail', default=None, help='model whose per-node table is printed')
    p.add_argument('--zoo', default=None, help='model_zoo.yml path')
    return p.parse_args()


def main():
    args = parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch
    from rich.console import Console
    from rich.table import Table

    from dery.utils import human
    from dery.zoo import build_zoo_model, load_zoo
    console = Console(width=max(Console().width, 150))
    zoo = load_zoo(args.zoo)
    summary = Table(title=f'DeRy dissection ({len(args.models)} of {len(zoo)} zoo models, random init, '
                          f'{args.input_size}px)')
    for col in ('model', 'adapter', 'family', 'nodes', 'first .. last node', 'stem', 'body params',
                'body FLOPs', 'exact', 'seconds'):
        summary.add_column(col, justify='right' if col in ('nodes', 'body params', 'body FLOPs',
                                                           'seconds') else 'left')
    detail_name = args.detail or args.models[0]
    detail = None
    for name in args.models:
        t0 = time.perf_counter()
        entry = zoo[name] if name in zoo else None
        zm = build_zoo_model(name, pretrained=False, zoo=zoo)
        zm.input_size = (3, args.input_size, args.input_size)
        x = torch.randn(1, *zm.input_size)
        with torch.no_grad():
            ref = zm.node_outputs(x, nodes=[-1])[zm.nodes[-1]]
            y = zm.cut(0, -1)(zm.stem()(x))
        diff = (y - ref).abs().max().item()
        summary.add_row(name, entry.adapter if entry else '?', zm.family, str(len(zm.nodes)),
                        f'{zm.nodes[0]} .. {zm.nodes[-1]}', human(zm.stem_params(), 2), human(zm.params(), 2),
                        human(zm.flops(), 2), f'{diff:.0e}', f'{time.perf_counter() - t0:.1f}')
        if name == detail_name:
            detail = zm
    console.print(summary)
    if detail is not None:
        t = Table(title=f'nodes of {detail.name}')
        for col in ('#', 'node', 'attached glue', 'input', 'output', 'params', 'FLOPs'):
            t.add_column(col)
        for row in detail.node_table():
            t.add_row(str(row['index']), row['name'], ', '.join(row['glue']) or '-',
                      'x'.join(map(str, row['in_shape'])), 'x'.join(map(str, row['out_shape'])),
                      human(row['params'], 2), human(row['flops'], 2))
        console.print(t)


if __name__ == '__main__':
    run(main)
