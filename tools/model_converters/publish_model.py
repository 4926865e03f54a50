"""Make a checkpoint to publish, in mmpretrain's convention, that alone rebuilds the network.

    .venv/bin/python tools/model_converters/publish_model.py IN_FILE OUT_FILE [--no-ema] [--config CONFIG]

Keeps the weights (the EMA ones when the run used EMAHook, unless --no-ema)
and the meta, drops optimizer and scheduler states, and embeds the assembly
record (meta.dery_assembly) and a standalone config of the network
(meta.dery_config), from --config or the training config the checkpoint
carries. Written as OUT_FILE's stem + _<YYYYMMDD>-<first 8 hex digits of its
sha256>.pth, then rebuilt from the file alone as a check. Load it with

    from dery.apis import init_model
    model = init_model(checkpoint='out_20240101-1a2b3c4d.pth')
"""
import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('in_file', help='input checkpoint (saved by training: it carries its assembly)')
    p.add_argument('out_file', help='output name; the date and hash are added')
    p.add_argument('--no-ema', action='store_true', help='publish the plain weights, not the EMA ones')
    p.add_argument('--config', help="the network's config (default: the one the checkpoint carries)")
    p.add_argument('--debug', action='store_true', help='show the traceback of DeRy errors too')
    return p.parse_args(argv)


def main(args):
    from dery.apis.deploy import publish_model
    final = publish_model(args.in_file, args.out_file, no_ema=args.no_ema, config=args.config)
    print(f'published {final} (weights, assembly record and config: dery.apis.init_model(checkpoint=...) '
          'rebuilds it)', flush=True)


if __name__ == '__main__':
    arguments = parse_args()  # --help answers before anything heavy is imported
    from dery.cli import run
    run(main, arguments)
