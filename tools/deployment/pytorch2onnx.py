"""Export an assembled network to ONNX, then check it against PyTorch on random inputs.

    .venv/bin/python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT [--output-file FILE]
        [--shape H [W]] [--batch-size 1] [--dynamic-export] [--opset-version 17] [--softmax]

CONFIG: the run's WORK_DIR/assembled.py, or its training config (the network is
then the checkpoint's assembly record). The graph maps a float image batch
[B, 3, H, W] of pixel values (0..255, as the data preprocessor receives them)
to logits (--softmax: scores); the data preprocessor is part of it. H, W
default to the assembly's input size. The parity check (max |ONNX - PyTorch|
<= 1e-4 on random inputs, onnxruntime on CPU) is printed; a larger difference
exits with an error. --dynamic-export makes the batch axis dynamic and checks
two more batch sizes (graphs with traced batch sizes, such as Swin's window
partitions, fail that check). Needs the optional packages onnx and onnxruntime
(requirements/optional.txt).
"""
import argparse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help="WORK_DIR/assembled.py or the run's training config")
    p.add_argument('checkpoint', help='checkpoint file (a training or a published one)')
    p.add_argument('--output-file', help='the .onnx file (default: the checkpoint with .onnx)')
    p.add_argument('--shape', type=int, nargs='+', help='input height [width] (default: the assembly input size)')
    p.add_argument('--batch-size', type=int, default=1, help='batch size of the exported graph')
    p.add_argument('--dynamic-export', action='store_true', help='a dynamic batch axis')
    p.add_argument('--opset-version', type=int, default=17, help='ONNX opset')
    p.add_argument('--softmax', action='store_true', help='output softmax scores instead of logits')
    p.add_argument('--tolerance', type=float, default=1e-4, help='the largest |ONNX - PyTorch| accepted')
    p.add_argument('--debug', action='store_true', help='show the traceback of DeRy errors too')
    return p.parse_args(argv)


def main(args):
    from dery.apis.deploy import export, export_report
    res = export(args.config, args.checkpoint, 'onnx', args.output_file, args.shape, args.batch_size,
                 args.dynamic_export, args.opset_version, args.softmax, tolerance=args.tolerance)
    print(export_report(res), flush=True)


if __name__ == '__main__':
    arguments = parse_args()  # --help answers before anything heavy is imported
    from dery.cli import run
    run(main, arguments)
