"""The reference algorithm, as the paper's PyTorch code runs it, on the built-in I3D's weights.

    PYTHONPATH=.:tests python benchmarks/reference_torch.py steps   [--layers ...] [--steps 3]
    PYTHONPATH=.:tests python benchmarks/reference_torch.py quality [--layer Mixed_3b] [--kernels 4]
    PYTHONPATH=.:tests python benchmarks/reference_torch.py robust --videos kvjax_videos.npz

What "as it runs" means (METHOD.md, stage 1): one kernel at a time; a raw parameter tensor
1x3x16x128x128 ~ N(0, 0.01^2); colour decorrelation + sigmoid; the reference transform (one
3D affine warp: integer shifts {0..7} px in x, y and {0..3} frames, scale {0.90..1.10} about
voxel (0, 0, 0), time scaled too, trilinear, zeros outside); trilinear resize to the model
input (align_corners=True); the *whole* network evaluated every step (all end points and the
logits, as a forward hook sees it) with the weights' gradients kept (requires_grad); the
channel objective of the target layer; Adam lr 0.05. The network is pytorch-i3d's
InceptionI3d (tests/torch_refs.py) holding the built-in I3D's weights, so its activations are
kvjax's (checked at start). The model's own value range ([-1, 1]) is used, not ImageNet's
mean/std, so both sides optimise the same function.

`steps`: seconds per step per kernel at the paper's sizes (model input 32x224x224) for the
layers of benchmarks/stage1.py. `quality`: runs the reference for its 1500 steps on a few
kernels at a smaller model input (16x112x112), recording the objective of the rendered
video without transform every `--every` steps and its wall time, and at the end the robust
objective of the final video (`robust_objective`; `--save-videos` keeps the videos). `robust`:
the same two measures (plain and robust) of videos made elsewhere (benchmarks/stage1_coarse.py
`--save-videos`), so kvjax's videos and the reference's are judged by one evaluator. Results
go to benchmarks/results/reference_<mode>_<timestamp>.json (benchmarks/stage1.py compares).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

import kvjax
import torch_refs
from machine import describe, save_videos
from kvjax.param import COLOR_CORRELATION_NORMALIZED

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCALES = tuple(round(1 + (i - 5) / 50, 2) for i in range(11))  # 0.90, 0.92, ..., 1.10
ROBUST_DRAWS, ROBUST_SEED = 32, 2026


def torch_i3d(model, device: str = "cpu") -> torch.nn.Module:
    """pytorch-i3d's InceptionI3d holding the built-in I3D's weights, eval mode, weights
    requiring gradients (as in the reference, which never turns them off), on `device`
    ("cpu", "cuda"). The logits' fixed 2x7x7 average pool is made adaptive over space so that
    inputs below 224x224 run (its cost is nil)."""
    net = torch_refs.InceptionI3d(num_classes=400)
    net.load_state_dict(torch_refs.builtin_i3d_state_dict(model))
    net.avg_pool = torch.nn.AdaptiveAvgPool3d((None, 1, 1))
    return net.eval().to(device)


def default_device() -> str:
    """"cuda" where PyTorch sees a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def _sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA runs asynchronously: a step's time is only
    known once its kernels have finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render(p: torch.Tensor) -> torch.Tensor:
    """Parameter (1, 3, T, H, W) -> RGB video in (0, 1): colour decorrelation, sigmoid."""
    m = torch.from_numpy(COLOR_CORRELATION_NORMALIZED).to(p.device)
    return torch.sigmoid(torch.einsum("rc,nc...->nr...", m, p))


def reference_transform(video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random 3D affine warp as the reference draws it: content at voxel q moves to
    s*q + d (corner-centred), d in {0..3} x {0..7} x {0..7} (t, y, x), s in SCALES."""
    _, _, t, h, w = video.shape
    d = [int(torch.randint(0, j + 1, (1,), generator=gen)) for j in (3, 7, 7)]
    s = SCALES[int(torch.randint(0, len(SCALES), (1,), generator=gen))]
    # align_corners=True: u = 2 q / (n - 1) - 1; output p samples input q = (p - d) / s.
    theta = torch.zeros(1, 3, 4, device=video.device)
    for row, (n, dd) in enumerate(zip((w, h, t), (d[2], d[1], d[0]))):
        theta[0, row, row] = 1 / s
        theta[0, row, 3] = 1 / s - 2 * dd / (s * (n - 1)) - 1
    grid = F.affine_grid(theta, list(video.shape), align_corners=True)
    return F.grid_sample(video, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def to_model(video: torch.Tensor, input_size) -> torch.Tensor:
    """RGB (0, 1) -> the model's [-1, 1], resized trilinearly to input_size (T, H, W)."""
    return F.interpolate(video * 2 - 1, size=tuple(input_size), mode="trilinear",
                         align_corners=True)


def objective(net, video, layer, kernel, input_size, whole=True) -> torch.Tensor:
    """Mean of channel `kernel` of `layer` over all positions (whole network evaluated)."""
    out = net(to_model(video, input_size), until=None if whole else layer)
    return out[layer][0, kernel].mean()


def robust_objective(net, video, layer, kernel, input_size, draws=ROBUST_DRAWS,
                     seed=ROBUST_SEED) -> float:
    """The objective averaged over `draws` reference transforms of `video` (1, 3, T, H, W),
    the same draws (fixed seed) for every video: how well the video keeps exciting the kernel
    under the shifts and scalings the reference trains with. A video fitted to the exact pixel
    grid scores well without transform and worse here. Shifts are in the video's own pixels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(np.mean([float(objective(net, reference_transform(video, gen), layer, kernel,
                                              input_size, whole=False)) for _ in range(draws)]))


def optimise(net, layer, kernel, input_size, steps, seed=0, every=0, size=(16, 128, 128),
             on_step=None) -> dict:
    """The reference loop for one kernel; returns the objective (no transform) every `every`
    steps with the wall time spent in optimisation steps so far. Runs on the device of
    `net`'s weights; the random draws come from one CPU generator, so a seed draws the same
    start and transforms on every device."""
    device = _device_of(net)
    gen = torch.Generator().manual_seed(seed)
    p = (0.01 * torch.randn(1, 3, *size, generator=gen)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.05)
    rec = {"steps": [], "seconds": [], "activation": []}
    elapsed = 0.0

    def record(n):
        with torch.no_grad():
            rec["steps"].append(n)
            rec["seconds"].append(elapsed)
            rec["activation"].append(float(objective(net, render(p), layer, kernel, input_size,
                                                     whole=False)))

    if every:
        record(0)
    for n in range(1, steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = -objective(net, reference_transform(render(p), gen), layer, kernel, input_size)
        loss.backward()
        opt.step()
        _sync(device)
        elapsed += time.perf_counter() - t0
        if on_step:
            on_step(n, elapsed)
        if every and n % every == 0:
            record(n)
            print(f"  kernel {kernel} step {n}: {elapsed:.0f} s, objective "
                  f"{rec['activation'][-1]:.3f}", flush=True)
    rec["video"] = render(p).detach()
    return rec


def check_same_function(model, net, input_size=(8, 64, 64)):
    """Max relative difference between the torch network and kvjax at three layers."""
    v = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 128, 128)).astype(np.float32)
    # Both sides resize 16x128x128 to input_size with align_corners=True (kvjax.models.base).
    errs = {}
    for layer in ("Conv3d_1a_7x7", "Mixed_3b", "Mixed_4b"):
        with torch.no_grad():
            ref = net(to_model(torch.from_numpy(v).to(_device_of(net)), input_size),
                      until=layer)[layer]
        ours = model.features(layer, input_size=input_size)(jnp.asarray(v[0].transpose(1, 2, 3, 0)))
        ref = ref[0].permute(1, 2, 3, 0).cpu().numpy()
        errs[layer] = float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())
    return errs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["steps", "quality", "robust"])
    p.add_argument("--layers", default="Conv3d_1a_7x7,Mixed_3b,Mixed_4b")
    p.add_argument("--layer", default="Mixed_3b")
    p.add_argument("--steps", type=int, default=3, help="`steps`: timed steps per layer")
    p.add_argument("--kernels", type=int, default=4, help="`quality`: kernels 0..n-1")
    p.add_argument("--quality-steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--input-size", default=None, help="T,H,W (default 32,224,224 for steps, "
                                                      "16,112,112 for quality)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if PyTorch "
                                                  "sees a GPU, else cpu)")
    p.add_argument("--save-videos", default=None, help="`quality`: write the final videos "
                   "(f32[K, T, H, W, 3], kernels, layer, input_size) to this .npz")
    p.add_argument("--videos", default=None, help="`robust`: an .npz as --save-videos writes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = kvjax.load_model("i3d")
    net = torch_i3d(model, args.device or default_device())
    out = {"machine": describe(), "args": vars(args), "parity": check_same_function(model, net)}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS, f"reference_{args.mode}_{stamp}.json")
    print(json.dumps(out), flush=True)
    if args.mode == "steps":
        size = tuple(int(x) for x in (args.input_size or "32,224,224").split(","))
        rows = []
        for layer in args.layers.split(","):
            stamps = []
            optimise(net, layer, 0, size, args.steps + 2,
                     on_step=lambda n, e: stamps.append(e))
            per = float(np.median(np.diff(stamps)[1:]))  # first two steps: warm-up
            rows.append({"layer": layer, "model_input": size, "first_step_s": stamps[0],
                         "step_s": per, "loadavg": os.getloadavg()})
            print(json.dumps(rows[-1]), flush=True)
        out["rows"] = rows
    elif args.mode == "robust":
        with np.load(args.videos) as z:
            videos, kernels = z["videos"], z["kernels"]
            layer, size = str(z["layer"]), tuple(int(x) for x in z["input_size"])
        out["videos"] = args.videos
        rows = out["rows"] = []
        for video, k in zip(videos, kernels):
            v = torch.from_numpy(np.ascontiguousarray(video.transpose(3, 0, 1, 2)))[None]
            v = v.to(_device_of(net))
            with torch.no_grad():
                plain = float(objective(net, v, layer, int(k), size, whole=False))
            rows.append({"layer": layer, "kernel": int(k), "model_input": size,
                         "video_size": list(video.shape[:3]), "activation": plain,
                         "robust_activation": robust_objective(net, v, layer, int(k), size)})
            print(json.dumps(rows[-1]), flush=True)
    else:
        size = tuple(int(x) for x in (args.input_size or "16,112,112").split(","))
        rows = out["rows"] = []
        kept = []
        for k in range(args.kernels):
            rec = optimise(net, args.layer, k, size, args.quality_steps, seed=k, every=args.every)
            video = rec.pop("video")
            rec["robust_activation"] = robust_objective(net, video, args.layer, k, size)
            kept.append(video[0].permute(1, 2, 3, 0).cpu().numpy())  # f32[T, H, W, 3]
            if args.save_videos:
                save_videos(args.save_videos, np.stack(kept), np.arange(len(kept)), args.layer,
                            size)
            f = model.features(args.layer, input_size=size)
            rec["activation_kvjax"] = float(f(jnp.asarray(kept[-1]))[..., k].mean())
            rows.append({"layer": args.layer, "kernel": k, "model_input": size, **rec,
                         "loadavg": os.getloadavg()})
            print(json.dumps(rows[-1]), flush=True)
            _save(out, path)  # after every kernel: a cut-short run keeps what it finished
    _save(out, path)


def _save(out: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, path)
    print("saved", path, flush=True)


if __name__ == "__main__":
    main()
