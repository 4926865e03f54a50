"""The paper's four ImageNet DeRy networks, rebuilt (random init, CPU): params and FLOPs vs the paper.

    python benchmarks/paper_models.py [--only 10m 50m] [--markdown]

Each network is built from its config (``configs/dery/paper/*.py``, a fixed
assembly) with ``dery.apis.get_model(CONFIG, pretrained=False)``: no search,
no weights. Printed per network: the paper's params and FLOPs (the original
code's ``My Params`` and ``Flops`` lines, Table 2), ours and the difference,
then the parts (stem, blocks, stitches, neck, head). FLOPs in two conventions:

* **paper**: what the original code's counter saw (mmcv's ``get_flops`` on
  ``backbone + neck``): no head, and no attention matrix products (``Q K^T``,
  ``A V``; module hooks never see them);
* **ours**: the whole classifier as ``dery.models.model_complexity`` counts it
  (what the solver's budget holds), attention products and head included.

Params count the whole classifier in both (the original's ``My Params`` did).
Target: params within 0.2% and paper-convention FLOPs within 2% for all four.
"""
import argparse
import os
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: name -> (config, paper params, paper FLOPs): the original configs' ``My Params`` / ``Flops``
PAPER = {
    '10m': ('dery-k4-10m-3g_paper_in1k.py', 7_834_434, 2.99e9),
    '30m': ('dery-k4-30m-6g_paper_in1k.py', 24_893_616, 4.47e9),
    '50m': ('dery-k4-50m-10g_paper_in1k.py', 40_414_054, 6.43e9),
    '90m': ('dery-k4-90m-20g_paper_in1k.py', 80_661_279, 13.29e9),
}
PARTS = ('stem', 'blocks', 'stitches', 'neck', 'head')


def measure(name):
    """``dict`` of the rebuilt network's parts in both conventions (see the module doc)."""
    import torch

    from dery.apis import get_model
    from dery.models import complexity_by_part
    from dery.models.complexity import ATTENTION_OPS
    config, p_params, p_flops = PAPER[name]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = get_model(os.path.join(ROOT, 'configs', 'dery', 'paper', config), pretrained=False)
    built = time.perf_counter() - t0
    ours = complexity_by_part(model, (3, 224, 224))
    paper = complexity_by_part(model, (3, 224, 224), ignore_ops=ATTENTION_OPS)
    paper_flops = sum(paper[k][1] for k in ('stem', 'blocks', 'stitches', 'neck'))
    return dict(name=name, config=config, paper_params=p_params, paper_flops=p_flops, ours=ours, paper=paper,
                params=ours['total'][0], flops_paper=paper_flops, flops_ours=ours['total'][1],
                describe=model.backbone.extra_repr(), build_s=built, total_s=time.perf_counter() - t0)


def pct(a, b):
    return f'{100.0 * (a - b) / b:+.3f}%'


def table(rows, markdown=False):
    head = ['network', 'params (paper)', 'params (ours)', 'diff', 'FLOPs (paper)', 'FLOPs (ours, paper conv.)',
            'diff', 'FLOPs (ours, our conv.)']
    lines = []
    for r in rows:
        lines.append([f"DeRy(4,{r['name'][:-1]},{dict(zip(PAPER, (3, 6, 10, 20)))[r['name']]})",
                      f"{r['paper_params']:,}", f"{r['params']:,}",
                      pct(r['params'], r['paper_params']), f"{r['paper_flops'] / 1e9:.2f}G",
                      f"{r['flops_paper'] / 1e9:.2f}G", pct(r['flops_paper'], r['paper_flops']),
                      f"{r['flops_ours'] / 1e9:.2f}G"])
    parts_head = ['network'] + [f'{p} params / FLOPs (ours; paper conv.)' for p in PARTS]
    parts = []
    for r in rows:
        row = [r['name']]
        for p in PARTS:
            pp, fo = r['ours'][p]
            fp = r['paper'][p][1] if p != 'head' else 0
            row.append(f'{pp / 1e6:.3f}M / {fo / 1e9:.3f}G; {fp / 1e9:.3f}G')
        parts.append(row)
    return _fmt(head, lines, markdown) + '\n\n' + _fmt(parts_head, parts, markdown)


def _fmt(head, lines, markdown):
    if markdown:
        out = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(' --- ' for _ in head) + '|']
        out += ['| ' + ' | '.join(row) + ' |' for row in lines]
        return '\n'.join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    return '\n'.join('  '.join(str(x).rjust(w) for x, w in zip(row, widths)) for row in [head] + lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', nargs='*', default=list(PAPER), choices=list(PAPER))
    ap.add_argument('--markdown', action='store_true', help='markdown tables (for configs/dery/README.md)')
    args = ap.parse_args()
    rows = []
    for name in args.only:
        r = measure(name)
        rows.append(r)
        print(f"{r['config']}: {r['describe']} (built in {r['build_s']:.0f}s, measured in "
              f"{r['total_s'] - r['build_s']:.0f}s)", flush=True)
    print()
    print(table(rows, args.markdown))
    print('\nparams: the whole classifier (head included), as the original code\'s "My Params". FLOPs: paper '
          'convention = backbone + neck without attention matrix products (the original code\'s mmcv counter); '
          'our convention = the whole classifier with them (dery.models.model_complexity, the solver\'s budget).')
    bad = [r['name'] for r in rows if abs(r['params'] / r['paper_params'] - 1) > 0.002
           or abs(r['flops_paper'] / r['paper_flops'] - 1) > 0.02]
    if bad:
        print(f'outside the targets (params 0.2%, FLOPs 2%): {", ".join(bad)}')
        sys.exit(1)


if __name__ == '__main__':
    main()
