"""kvjax.ops against XLA's native ops and PyTorch on CPU: forward + input gradient.

    PYTHONPATH=. python benchmarks/ops.py [--sections conv,pool,net] [--repeats 3] [--cap 5]

conv: every distinct conv shape of DeepMind's I3D at 1x32x224x224x3 (found by tracing the
built-in model with a recording `ops.conv3d`), timed as native lax.conv_general_dilated, as
kvjax's CPU choice (and, for kernels with kt > 1, both 2D formulations), and as PyTorch's
F.conv3d (2 threads, input requires_grad, weight not). Native times that would exceed `--cap`
seconds are extrapolated from a run with a short time axis (marked "~", see the table notes).
pool: the same for every pooling shape. net: one forward + input-gradient step of I3D cut at
Mixed_3b, kvjax (`load_model("i3d").features`) against a torch.nn.functional port with the
same weights, TF 'SAME' padding through F.pad.

Each time is the median of `--repeats` runs after one warm-up (compile) run. The machine is
shared, so the load average is recorded; results go to benchmarks/results/ops-cpu.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

import kvjax
from kvjax import ops
from kvjax.models import i3d
from machine import describe, median_time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FULL = (1, 32, 224, 224, 3)
torch.set_num_threads(2)


# ------------------------------------------------------------------------------ machine

def machine() -> dict:
    return describe()


# -------------------------------------------------------------------- shapes, by tracing

def i3d_shapes() -> tuple[list[dict], list[dict]]:
    """Distinct (conv, pool) calls of I3D at 1x32x224x224x3, in order, with use counts."""
    convs, pools = {}, {}
    conv3d, max_pool, avg_pool = ops.conv3d, ops.max_pool3d, ops.avg_pool3d

    def rec_conv(x, w, strides=(1, 1, 1), padding="SAME", **kw):
        key = (tuple(x.shape), tuple(w.shape), tuple(strides), padding)
        convs[key] = convs.get(key, 0) + 1
        return conv3d(x, w, strides, padding, **kw)

    def rec_pool(kind, fn):
        def pool(x, window, strides, padding="SAME", **kw):
            key = (kind, tuple(x.shape), tuple(window), tuple(strides), padding)
            pools[key] = pools.get(key, 0) + 1
            return fn(x, window, strides, padding, **kw)
        return pool

    graphdef, state = nnx.split(i3d.InceptionI3d(rngs=nnx.Rngs(0)))
    ops.conv3d, ops.max_pool3d = rec_conv, rec_pool("max", max_pool)
    ops.avg_pool3d = rec_pool("avg", avg_pool)
    try:
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                       jax.ShapeDtypeStruct(FULL, jnp.float32))
    finally:
        ops.conv3d, ops.max_pool3d, ops.avg_pool3d = conv3d, max_pool, avg_pool
    return ([dict(x=k[0], w=k[1], strides=k[2], padding=k[3], uses=n) for k, n in convs.items()],
            [dict(kind=k[0], x=k[1], window=k[2], strides=k[3], padding=k[4], uses=n)
             for k, n in pools.items()])


# ------------------------------------------------------------------------------- torch

def torch_same_pad(x, window, strides, value=0.0):
    """F.pad with TensorFlow's 'SAME' (asymmetric) padding on an NCDHW tensor."""
    pads = ops.resolve_padding(x.shape[2:], window, strides, "SAME")
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad: last axis first
    return F.pad(x, flat, value=value) if any(flat) else x


def torch_conv(x, w_t, strides, padding):
    """x NCDHW, w_t (Cout, Cin, kt, kh, kw); padding "SAME"/"VALID" as in TF."""
    if padding == "SAME":
        x = torch_same_pad(x, w_t.shape[2:], strides)
    return F.conv3d(x, w_t, stride=strides)


def torch_pool(kind, x, window, strides, padding):
    if kind == "max":
        x = torch_same_pad(x, window, strides, -float("inf")) if padding == "SAME" else x
        return F.max_pool3d(x, window, strides)
    return F.avg_pool3d(x, window, strides)  # I3D's only avg pool is VALID


def torch_step_time(fn, x_shape, repeats):
    """Median forward + input-gradient seconds of fn(x NCDHW) with x.requires_grad."""
    n, t, h, w, c = x_shape
    x = torch.randn(n, c, t, h, w, requires_grad=True)

    def step():
        y = fn(x)
        y.backward(torch.ones_like(y))
        x.grad = None
    return median_time(step, repeats)


# --------------------------------------------------------------------------------- jax

def jax_step(fn):
    """kvjax.jit of x -> (fn(x), d sum(fn(x)) / dx) (kvjax's CPU compiler options, as every
    kvjax program; kvjax/compiler.py)."""
    return kvjax.jit(jax.value_and_grad(lambda x, *a: jnp.sum(fn(x, *a))))


def jax_time(fn, x_shape, args, repeats):
    x = jax.random.normal(jax.random.key(0), x_shape, jnp.float32)
    step = jax_step(fn)
    return median_time(lambda: jax.block_until_ready(step(x, *args)), repeats)


def probe_shape(x_shape, kernel, strides, max_hw=28):
    """A cut-down input (2 output time steps, at most max_hw x max_hw output cells) to time
    native ops that would take minutes at full size."""
    sizes = [max(k, s + 1) if s > 1 else 2 for k, s in zip(kernel[:1], strides[:1])]
    for n, k, s in zip(x_shape[2:4], kernel[1:], strides[1:]):
        sizes.append(min(n, max_hw * s + k - 1))
    return (x_shape[0], *sizes, x_shape[-1])


def native_conv_time(c, w, repeats, cap):
    """Native time at full size, or extrapolated by output volume from a probe run."""
    conv = lambda x, w: ops.conv3d(x, w, c["strides"], c["padding"], impl="native")  # noqa
    small = probe_shape(c["x"], c["w"][:3], c["strides"])
    volume = lambda s: np.prod(jax.eval_shape(  # noqa: E731
        conv, jax.ShapeDtypeStruct(s, jnp.float32), w).shape[1:4])
    estimate = jax_time(conv, small, (w,), 1) * volume(c["x"]) / volume(small)
    if estimate > cap:
        return estimate, f"~ (from {'x'.join(map(str, small[1:4]))})"
    return jax_time(conv, c["x"], (w,), repeats), ""


def conv_row(c, repeats, cap) -> dict:
    w = jax.random.normal(jax.random.key(1), c["w"], jnp.float32) * 0.05
    strides, padding = c["strides"], c["padding"]
    choice = ops._cpu_strategy(c["x"], c["w"], strides, None)
    row = dict(x=c["x"], w=c["w"], strides=strides, uses=c["uses"], kvjax_impl=choice)
    row["native_s"], row["native_note"] = native_conv_time(c, w, repeats, cap)
    alts = ("taps2d", "fold2d") + (("s2d",) if max(strides) > 1 else ())
    impls = [choice] + [i for i in alts if c["w"][0] > 1 and i != choice]
    for impl in impls:
        conv = lambda x, w, impl=impl: ops.conv3d(x, w, strides, padding, impl=impl)  # noqa
        row[f"{impl}_s"] = jax_time(conv, c["x"], (w,), repeats)
    row["kvjax_s"] = row[f"{choice}_s"]
    w_t = torch.from_numpy(np.asarray(w)).permute(4, 3, 0, 1, 2).contiguous()
    row["torch_s"] = torch_step_time(lambda x: torch_conv(x, w_t, strides, padding),
                                     c["x"], repeats)
    return row


def pool_row(p, repeats) -> dict:
    fn = ops.max_pool3d if p["kind"] == "max" else ops.avg_pool3d
    row = dict(p)
    for impl in ("native", "cpu"):
        pool = lambda x, impl=impl: fn(x, p["window"], p["strides"], p["padding"], impl=impl)  # noqa
        row[f"{impl}_s"] = jax_time(pool, p["x"], (), repeats)
    row["kvjax_s"] = row.pop("cpu_s")
    row["torch_s"] = torch_step_time(
        lambda x: torch_pool(p["kind"], x, p["window"], p["strides"], p["padding"]),
        p["x"], repeats)
    return row


# ----------------------------------------------------------- I3D up to Mixed_3b in torch

def torch_i3d_mixed_3b(video, arrays):
    """video (T,H,W,3) in [0,1] -> Mixed_3b activations NCDHW, I3D with TF SAME padding."""
    def unit(x, scope, stride=(1, 1, 1)):
        k = torch.from_numpy(arrays[f"params/{scope}/Conv_0/kernel"]).permute(4, 3, 0, 1, 2)
        y = torch_conv(x, k.contiguous(), stride, "SAME")
        stat = lambda n: torch.from_numpy(  # noqa: E731
            arrays[f"batch_stats/{scope}/BatchNorm_0/{n}"].reshape(1, -1, 1, 1, 1))
        beta = torch.from_numpy(arrays[f"params/{scope}/BatchNorm_0/bias"].reshape(1, -1, 1, 1, 1))
        return F.relu((y - stat("mean")) * torch.rsqrt(stat("var") + 1e-3) + beta)

    x = video.permute(3, 0, 1, 2)[None] * 2.0 - 1.0
    x = unit(x, "Conv3d_1a_7x7", (2, 2, 2))
    x = torch_pool("max", x, (1, 3, 3), (1, 2, 2), "SAME")
    x = unit(unit(x, "Conv3d_2b_1x1"), "Conv3d_2c_3x3")
    x = torch_pool("max", x, (1, 3, 3), (1, 2, 2), "SAME")
    b = lambda n: f"Mixed_3b/Branch_{n}"  # noqa: E731
    return torch.cat([unit(x, f"{b(0)}/Conv3d_0a_1x1"),
                      unit(unit(x, f"{b(1)}/Conv3d_0a_1x1"), f"{b(1)}/Conv3d_0b_3x3"),
                      unit(unit(x, f"{b(2)}/Conv3d_0a_1x1"), f"{b(2)}/Conv3d_0b_3x3"),
                      unit(torch_pool("max", x, (3, 3, 3), (1, 1, 1), "SAME"),
                           f"{b(3)}/Conv3d_0b_1x1")], dim=1)


def net_section(repeats) -> dict:
    """Forward + input gradient of mean(Mixed_3b) w.r.t. a 32x224x224 video, both libraries."""
    model = kvjax.load_model("i3d")
    feats = model.features("Mixed_3b")
    video = np.random.default_rng(0).uniform(size=(32, 224, 224, 3)).astype(np.float32)
    fn = lambda f, v: jax.value_and_grad(lambda v: jnp.mean(f(v)))(v)  # noqa: E731
    step, plain = kvjax.jit(fn), jax.jit(fn)  # plain: XLA's default CPU options
    (val, grad) = step(feats, jnp.asarray(video))
    kv_s = median_time(lambda: jax.block_until_ready(step(feats, jnp.asarray(video))), repeats)
    plain_s = median_time(lambda: jax.block_until_ready(plain(feats, jnp.asarray(video))),
                          repeats)

    arrays = i3d.load_arrays(i3d.pretrained_path())
    v_t = torch.from_numpy(video).requires_grad_(True)

    def torch_step():
        y = torch_i3d_mixed_3b(v_t, arrays).mean()
        y.backward()
        return y
    t_val = torch_step()
    t_grad = v_t.grad.numpy().copy()
    v_t.grad = None
    th_s = median_time(lambda: (torch_step(), setattr(v_t, "grad", None)), repeats)
    g = np.asarray(grad)
    return dict(kvjax_s=kv_s, kvjax_plain_jit_s=plain_s, torch_s=th_s, value_kvjax=float(val), value_torch=float(t_val),
                grad_max_rel_diff=float(np.abs(g - t_grad).max() / np.abs(t_grad).max()),
                grad_rel_l2=float(np.linalg.norm(g - t_grad) / np.linalg.norm(t_grad)))


# ------------------------------------------------------------------------------ report

def fmt_s(s, note=""):
    return f"{note[:1]}{s:.3f}" if s < 100 else f"{note[:1]}{s:.0f}"


def conv_table(rows) -> list[str]:
    out = ["| input NTHWC | kernel kt,kh,kw,Cin,Cout | stride | uses | native s | kvjax s "
           "(impl) | taps2d s | fold2d s | torch s | torch/kvjax |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alt = lambda k: fmt_s(r[k]) if k in r else "-"  # noqa: E731
        out.append(f"| {'x'.join(map(str, r['x']))} | {','.join(map(str, r['w']))} | "
                   f"{''.join(map(str, r['strides']))} | {r['uses']} | "
                   f"{fmt_s(r['native_s'], r['native_note'])} | {fmt_s(r['kvjax_s'])} "
                   f"({r['kvjax_impl']}) | {alt('taps2d_s')} | {alt('fold2d_s')} | "
                   f"{fmt_s(r['torch_s'])} | {r['torch_s'] / r['kvjax_s']:.2f} |")
    tot = {k: sum(r[k] * r["uses"] for r in rows) for k in ("native_s", "kvjax_s", "torch_s")}
    out.append(f"| **sum x uses** | | | | {fmt_s(tot['native_s'])} | {fmt_s(tot['kvjax_s'])} "
               f"| | | {fmt_s(tot['torch_s'])} | {tot['torch_s'] / tot['kvjax_s']:.2f} |")
    return out


def pool_table(rows) -> list[str]:
    out = ["| op | input NTHWC | window | stride | padding | uses | native s | kvjax s | "
           "torch s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['kind']} | {'x'.join(map(str, r['x']))} | {r['window']} | "
                   f"{r['strides']} | {r['padding']} | {r['uses']} | {fmt_s(r['native_s'])} "
                   f"| {fmt_s(r['kvjax_s'])} | {fmt_s(r['torch_s'])} |")
    return out


def write(result):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "ops-cpu.json"), "w") as f:
        json.dump(result, f, indent=1)
    m = result["machine"]
    lines = ["# kvjax.ops on CPU: forward + input gradient, seconds", "",
             f"{m['cpu']}, {m['cores']} cores; jax {m['jax']} ({m['backend']}), torch "
             f"{m['torch']} ({m['torch_threads']} threads); load average at start "
             f"{', '.join(f'{l:.2f}' for l in m['loadavg_start'])}, at end "
             f"{', '.join(f'{l:.2f}' for l in result['loadavg_end'])} (shared machine: other "
             "jobs ran alongside). Median of "
             f"{result['repeats']} runs after a warm-up; every step is forward plus the "
             "gradient w.r.t. the input only.", ""]
    if "conv" in result:
        lines += ["## Convolutions of I3D at 1x32x224x224x3", "",
                  f"'~': native would take over {result['cap']} s: timed once on a cut-down input "
                  "(2 output time steps, at most 28x28 output cells; JSON `native_note` gives "
                  "its T,H,W) and scaled by output volume.", ""]
        lines += conv_table(result["conv"]) + [""]
    if "pool" in result:
        lines += ["## Pooling of I3D", ""] + pool_table(result["pool"]) + [""]
    if "net" in result:
        n = result["net"]
        lines += ["## I3D up to Mixed_3b, one forward + input-gradient step (32x224x224)", "",
                  "| kvjax s | kvjax under plain jax.jit s | torch s | torch/kvjax | value kvjax "
                  "| value torch | grad: max diff / max, rel L2 |", "|---|---|---|---|---|---|---|",
                  f"| {n['kvjax_s']:.3f} | {n.get('kvjax_plain_jit_s', float('nan')):.3f} | "
                  f"{n['torch_s']:.3f} | "
                  f"{n['torch_s'] / n['kvjax_s']:.2f} | {n['value_kvjax']:.6f} | "
                  f"{n['value_torch']:.6f} | {n['grad_max_rel_diff']:.1e}, "
                  f"{n['grad_rel_l2']:.1e} |", "",
                  "kvjax s: compiled with kvjax.jit (kvjax/compiler.py: XLA's YNNPACK "
                  "fusions off), as all of kvjax's programs are. Plain jax.jit, "
                  "XLA's default CPU options, is in the next column. Native XLA is left out "
                  "here: its stem alone takes minutes (table above)."]
    text = "\n".join(lines)
    with open(os.path.join(RESULTS, "ops-cpu.md"), "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="conv,pool,net")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap", type=float, default=5.0, help="seconds; native beyond is estimated")
    args = ap.parse_args()
    sections = args.sections.split(",")
    result = dict(machine=machine(), repeats=args.repeats, cap=args.cap)
    convs, pools = i3d_shapes()
    if "conv" in sections:
        result["conv"] = []
        for c in convs:
            result["conv"].append(conv_row(c, args.repeats, args.cap))
            print(conv_table(result["conv"])[-2], flush=True)
    if "pool" in sections:
        result["pool"] = [pool_row(p, args.repeats) for p in pools]
    if "net" in sections:
        result["net"] = net_section(args.repeats)
    result["loadavg_end"] = os.getloadavg()
    write(result)


if __name__ == "__main__":
    main()
