"""The CPU max pool's hand-written gradient against another revision's, alone and in I3D.

    PYTHONPATH=.:tests:benchmarks python benchmarks/pools.py --against 36124d0
    PYTHONPATH=.:tests:benchmarks python benchmarks/pools.py --against 36124d0 --kernels 4 \
        --layers Mixed_4b --rounds 3

Two measurements, each the forward plus the input gradient (reverse mode, inside
`kvjax.ops.reverse_mode_only()`, compiled with kvjax.jit as stage 1 is), of the "separable_vjp"
form in this checkout ("this") and in the git revision `--against` ("that": its kvjax/ops.py,
loaded from git as a module of its own):
1. each of I3D's max pools up to Mixed_4b alone, at the sizes it pools at the `paper` preset's
   model input (16x128x128 videos resized to 32x224x224), K videos at once;
2. I3D truncated after each of `--layers`, K videos vmapped (stage 1's shape of program), a
   one-channel readout for Mixed_4b (stage 1's), the mean square of the output otherwise.
The forms alternate (this, that, that, this, ...) so the VM's drift falls on both alike; each
program is compiled anew (a fresh jit), timed as the median of `--repeats` calls. Results: a
printed table and benchmarks/results/pools_<stamp>.json with the machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import kvjax
from kvjax import ops
from machine import median_time, save_results
from stage1 import RESULTS, machine  # benchmarks/stage1.py

# I3D's max pools up to Mixed_4b at the paper preset: (name, input N=1 shape, window, strides)
POOLS = (("MaxPool3d_2a_3x3", (16, 112, 112, 64), (1, 3, 3), (1, 2, 2)),
         ("MaxPool3d_3a_3x3", (16, 56, 56, 192), (1, 3, 3), (1, 2, 2)),
         ("Mixed_3b/Branch_3", (16, 28, 28, 192), (3, 3, 3), (1, 1, 1)),
         ("Mixed_3c/Branch_3", (16, 28, 28, 256), (3, 3, 3), (1, 1, 1)),
         ("MaxPool3d_4a_3x3", (16, 28, 28, 480), (3, 3, 3), (2, 2, 2)),
         ("Mixed_4b/Branch_3", (8, 14, 14, 480), (3, 3, 3), (1, 1, 1)))


def ops_at(revision: str):
    """kvjax/ops.py as of `revision`, imported as a module of its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "show", f"{revision}:kvjax/ops.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "ops_that.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("ops_that", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _order(rounds: int) -> list[str]:
    return [v for r in range(rounds) for v in (("this", "that") if r % 2 == 0
                                              else ("that", "this"))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="git revision of the other form")
    p.add_argument("--kernels", type=int, default=1, help="K videos at once")
    p.add_argument("--layers", default="Mixed_3b,Mixed_4b", help="truncation points; '' none")
    p.add_argument("--rounds", type=int, default=2, help="alternating pairs per measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per program")
    args = p.parse_args(argv)
    that = ops_at(args.against)
    forms = {"this": ops.POOL_IMPLS["separable_vjp"], "that": that.POOL_IMPLS["separable_vjp"]}
    info = machine()
    print(json.dumps(info), flush=True)
    k, rows = args.kernels, []
    for name, shape, window, strides in POOLS:
        x = jax.random.normal(jax.random.key(0), (k, *shape))
        row = {"what": name, "K": k, "this": [], "that": []}
        pads = ops.resolve_padding(shape[:3], window, strides, "SAME")
        for v in _order(args.rounds):
            def pool(x, form=forms[v]):
                return form(x, -jnp.inf, jax.lax.max, window, strides, pads)
            g = jax.random.normal(jax.random.key(1), jax.eval_shape(pool, x).shape)
            fn = kvjax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g)[0])
            row[v].append(median_time(lambda: jax.block_until_ready(fn(x, g)), args.repeats))
        rows.append(row)
        print(json.dumps(row), flush=True)
    model = kvjax.load_model("i3d")
    videos = jax.random.uniform(jax.random.key(0), (k, 16, 128, 128, 3))
    for layer in filter(None, args.layers.split(",")):
        row = {"what": f"I3D to {layer}", "K": k, "this": [], "that": []}
        for v in _order(args.rounds):
            ops.POOL_IMPLS["separable_vjp"] = forms[v]  # read when the program is traced
            try:
                f = model.features(layer, relu_grad="exact")
                loss = ((lambda v, f: jnp.mean(f(v, channel=0))) if layer.startswith("Mixed_4")
                        else (lambda v, f: jnp.mean(f(v) ** 2)))
                with ops.reverse_mode_only():
                    fn = kvjax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)))
                    row[v].append(median_time(
                        lambda: jax.block_until_ready(fn(videos, f)), args.repeats))
            finally:
                ops.POOL_IMPLS["separable_vjp"] = forms["this"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nforward + input gradient, K = {k}, medians of {args.rounds} programs per form "
          f"(this checkout against {args.against}):")
    print(f"| {'what':<24} | this ms | that ms | this/that |")
    for row in rows:
        a, b = (float(np.median(row[v])) * 1e3 for v in ("this", "that"))
        row["this_median_ms"], row["that_median_ms"] = a, b
        print(f"| {row['what']:<24} | {a:7.1f} | {b:7.1f} | {a / b:9.3f} |")
    save_results({"machine": info, "args": vars(args), "rows": rows}, "pools", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
