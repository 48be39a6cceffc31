"""The `kvjax` command: layers, visualize, convert, inspect.

Every user error (KvjaxError) becomes one line on stderr and exit code 2, with nothing written.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from kvjax.errors import KvjaxError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvjax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lay = sub.add_parser("layers", help="list a model's layers, kernel counts and shapes")
    _model_args(lay)
    lay.add_argument("--size", type=_size, default=None, metavar="T,H,W",
                     help="model input size for the shapes (default: the model's own)")

    vis = sub.add_parser("visualize", help="optimal videos, textures and motion of kernels")
    _model_args(vis)
    vis.add_argument("--layer", default=None, help="layer name (see `kvjax layers`)")
    vis.add_argument("--kernels", default=None, metavar="SPEC",
                     help="'all', '0-63', '0,5,9' or '0-7,12' (default: 0-7)")
    vis.add_argument("--preset", default="fast", choices=("fast", "paper"))
    vis.add_argument("--steps1", type=int, default=None, help="stage-1 optimisation steps")
    vis.add_argument("--steps2", type=int, default=None, help="stage-2 optimisation steps")
    vis.add_argument("--coarse-steps", type=int, default=None, metavar="N",
                     help="of the stage-1 steps, the first N on a video half as high and wide, "
                          "then tiled to full size (coarse to fine: ~4x cheaper steps; "
                          "default 0)")
    vis.add_argument("--size", type=_size, default=None, metavar="T,H,W",
                     help="size of the optimised video")
    vis.add_argument("--param", choices=("pixel", "spectral"), default=None,
                     help="stage-1 video parameterisation")
    vis.add_argument("--chunk", type=int, default=None,
                     help="kernels per compiled program (default: what fits in device memory, "
                          "at most 32 per device, 4 per CPU device)")
    vis.add_argument("--seed", type=_seed, default=0, metavar="N",
                     help=f"random seed, 0 to {SEED_MAX} (default: 0)")
    vis.add_argument("--out", default="kvjax-out", help="output folder (default: kvjax-out)")
    vis.add_argument("--resume", action="store_true",
                     help="continue a run in --out (also automatic when --out holds the same run)")
    vis.add_argument("--coordinator", default=None, metavar="HOST:PORT|auto",
                     help="start JAX's distributed runtime (process 0's address, or 'auto' to "
                          "detect Slurm / Open MPI / TPU); see README 'Many devices and hosts'")
    vis.add_argument("--num-processes", type=int, default=None, metavar="N",
                     help="processes sharing this run; each takes a contiguous share of kernels")
    vis.add_argument("--process-id", type=int, default=None, metavar="I",
                     help="this process's index, 0 to N-1 (process 0 writes the report)")

    conv = sub.add_parser("convert", help="convert a PyTorch checkpoint into a kvjax checkpoint")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--arch", required=True)
    conv.add_argument("--hparam", type=_hparam, action="append", default=[],
                      metavar="NAME=VALUE", help="a training hyper-parameter the file lacks, "
                      "e.g. downsample=4,2,2 for a bare VideoGPT state dict (repeatable)")
    conv.add_argument("--prefix", default=None, metavar="PREFIX",
                      help="convert only the tensors whose keys start with PREFIX (whole "
                      "dot-separated components, e.g. encoder_q. or module.backbone.), PREFIX "
                      "removed; without it the keys are used as they are, or, where they do "
                      "not fit --arch, under the one prefix they fit ('' keeps the keys as "
                      "they are)")
    conv.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                      help="leave out the tensors whose keys (after --prefix) match this glob "
                      "pattern, e.g. 'fc.*' for a self-supervised projection head in the "
                      "classifier's place (repeatable)")

    ins = sub.add_parser("inspect", help="list a checkpoint's tensors and guess its architecture")
    ins.add_argument("src")
    return p


def _hparam(text: str) -> tuple[str, object]:
    """NAME=VALUE -> (name, value): an int, a list of ints (4,2,2), else the text."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        ints = [int(v) for v in value.split(",")]
    except ValueError:
        return name, value
    return name, ints if "," in value else ints[0]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="i3d", help="built-in model name (default: i3d)")
    p.add_argument("--checkpoint", default=None, help="converted checkpoint (kvjax convert)")


# jax.random.key takes a seed in the int64 range but, without jax_enable_x64, keeps only its
# low 32 bits (key(2**32) == key(0)): every seed in 0-SEED_MAX gives its own key.
SEED_MAX = 2**32 - 1


def _seed(text: str) -> int:
    try:
        seed = int(text)
        if not 0 <= seed <= SEED_MAX:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer 0 to {SEED_MAX}, got {text!r}")
    return seed


def _size(text: str) -> tuple[int, int, int]:
    try:
        t, h, w = (int(v) for v in text.split(","))
        if min(t, h, w) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be three positive integers T,H,W, got {text!r}")
    return t, h, w


def cmd_layers(args) -> int:
    from kvjax.models import load_model
    model = load_model(args.model, args.checkpoint)
    rows = model.layers(args.size)
    size = args.size or model.input_size
    print(f"{model.name}: {model.description}")
    print(f"input {size[0]}x{size[1]}x{size[2]} (T x H x W), pixels [0,1] -> "
          f"[{model.value_range[0]:g},{model.value_range[1]:g}]")
    width = max((len(r.name) for r in rows), default=5)
    print(f"{'layer':<{width}}  {'kernels':>7}  {'output t x h x w':>16}  objective reads")
    for r in rows:
        shape = "x".join(map(str, r.shape[:-1]))
        print(f"{r.name:<{width}}  {r.channels:>7}  {shape:>16}  {r.read}")
    beyond = len(model.layers()) - len(rows)
    if beyond:
        print(f"(the last {beyond} layer(s), after {rows[-1].name if rows else 'the input'}, are "
              f"out of reach of this input: it is too small for them)")
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it ends as Ctrl-C does: temporary
    folders removed, one line said."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a thread): left as it is
        previous = None
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a reader gone (`kvjax layers | head -1`) shows here, not at exit
        return code
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: one line, not a traceback. Outputs are written atomically, so
        # what a command finished is whole on disk and nothing is half written.
        kept = {"visualize": "the kernels it finished are kept: run the same command again "
                             "to continue",
                "convert": "its destination is written whole or not at all"}.get(
                    args.command, "")
        how = "terminated" if isinstance(e, _Terminated) else "interrupted"
        print(f"kvjax {args.command}: {how}{'; ' + kept if kept else ''}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except BrokenPipeError:
        # Whoever read stdout stopped reading: nothing more to say, and no traceback. What a
        # command had finished is on disk already (outputs are written atomically). Python
        # flushes stdout again at exit: point it at /dev/null so that flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args) -> int:
    try:
        if args.command == "layers":
            return cmd_layers(args)
        if args.command == "visualize":
            from kvjax.commands.visualize import run
            return run(args)
        if args.command == "convert":
            from converters.commands import convert
            print(convert(args.src, args.dst, args.arch, dict(args.hparam), args.prefix,
                          args.ignore))
            return 0
        if args.command == "inspect":
            from converters.commands import inspect
            print(inspect(args.src))
            return 0
    except KvjaxError as e:
        print(f"kvjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
