"""`visualize`: both stages for many kernels, arrays in, arrays out (kernels first).

    res = kvjax.visualize(features, kernels=range(8), config=kvjax.Config(), key=key)
    res.videos, res.texture, res.motion, res.summary

`features` is any pure JAX function of one video f32[T,H,W,3] in [0,1] -> f32[t,h,w,C]: a
built-in model's `model.features(layer)` or a user's own (a `jax.tree_util.Partial` over its
weights keeps them out of the compiled constants). Keys: stage 1 of kernel k uses
fold_in(fold_in(key, 1), k) and stage 2 fold_in(fold_in(key, 2), k), so every kernel's result
depends only on (key, k, config): chunking, resuming and the other kernels change nothing.

Both stages run in chunks (config `chunk`, or as many kernels as fit in device memory: see
kvjax.Config), one compiled program per stage for all chunks, each chunk's kernels split over
the process's devices (kvjax.devices). The arrays returned are numpy arrays in host memory,
kernels in the order requested. Several processes (hosts) each pass their own share,
kvjax.devices.process_share(kernels, jax.process_index(), jax.process_count()).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from kvjax import stage1, stage2
from kvjax.config import Config
from kvjax.errors import KvjaxError
from kvjax.objectives import Objective

SUMMARY_KEYS = ("activation", "activation_start", "direction_deg", "speed_px_per_frame",
                "motion_fraction", "recon_mse")


class Result(NamedTuple):
    """Both stages for K kernels, in the order requested (numpy arrays in host memory).

    kernels i32[K]; videos f32[K,T,H,W,3] in [0,1] (stage 1); texture f32[K,H,W,3];
    displacement f32[K,T,H,W,2] (px, image coords, y down; V_t(p) ~ I(p + D_t(p)));
    motion f32[K,T,H,W,2] content velocity in px/frame (image coords, y down);
    reconstruction f32[K,T,H,W,3]; trace1 f32[K,steps1]; trace2 f32[K,steps2];
    finite bool[K] (False: stage 1 hit NaN/inf, last finite video kept; or stage 2's
    texture, motion or reconstruction is not finite);
    summary: dict of f32[K] named as in results.json (activation, activation_start,
    direction_deg, speed_px_per_frame, motion_fraction, recon_mse).
    """
    kernels: np.ndarray
    videos: np.ndarray
    texture: np.ndarray
    displacement: np.ndarray
    motion: np.ndarray
    reconstruction: np.ndarray
    trace1: np.ndarray
    trace2: np.ndarray
    finite: np.ndarray
    summary: dict


def decompose(videos, config: Config | None = None, key: jax.Array | None = None,
              *, kernels: Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> stage2.Decomposition:
    """Stage 2 alone on videos f32[K,T,H,W,3] (kernels first): a stage2.Decomposition,
    whose texture, motion (= velocity), displacement, reconstruction and summary are numpy
    arrays with K first, as in `Result`.

    `kernels` (default 0..K-1) only names the videos for their keys, as `visualize` does:
    video i uses fold_in(fold_in(key, 2), kernels[i]).
    """
    config = config or Config()
    key = jax.random.key(0) if key is None else key
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise KvjaxError(f"videos must be f32[K, T, H, W, 3] (K videos of T frames, RGB "
                         f"last); got shape {videos.shape}")
    return stage2.decompose(videos, config.stage2, jax.random.fold_in(key, 2),
                            kernels=kernels, devices=devices)


def visualize(features: Callable[[jax.Array], jax.Array], kernels: Sequence[int],
              config: Config | None = None, key: jax.Array | None = None, *,
              objective: Objective | None = None,
              progress: Callable[..., Any] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Result:
    """Stage 1 (optimal video) then stage 2 (texture + motion) for every kernel in `kernels`.

    progress(stage, done, total) is called as the work advances (stage is "stage 1" or
    "stage 2"; for stage 1, done/total count optimisation steps of the current chunk; for
    stage 2, chunks). devices: where to run (default: all of this process's devices).
    """
    config = config or Config()
    key = jax.random.key(0) if key is None else key
    kernels = np.asarray(list(kernels), np.int32)
    cb1 = cb2 = None
    if progress is not None:
        cb1 = lambda done, total, chunk, n_chunks: progress("stage 1", done, total)  # noqa: E731
        cb2 = lambda done, total: progress("stage 2", done, total)  # noqa: E731
    s1 = stage1.optimize(features, kernels, config.stage1, jax.random.fold_in(key, 1),
                         objective=objective, progress=cb1, devices=devices)
    if progress is not None:
        progress("stage 2", 0, 1)
    dec = stage2.decompose(s1.videos, config.stage2, jax.random.fold_in(key, 2),
                           kernels=kernels, devices=devices, progress=cb2)
    summary = {"activation": s1.activation, "activation_start": s1.activation_start,
               **dec.summary}
    finite = np.asarray(s1.finite) & _all_finite(dec.texture, dec.velocity, dec.reconstruction)
    return Result(kernels, s1.videos, dec.texture, dec.displacement, dec.velocity,
                  dec.reconstruction, s1.trace, dec.loss_trace, finite, summary)


def _all_finite(*arrays) -> np.ndarray:
    """bool[K]: every value of each kernel's arrays (K first) is finite."""
    return np.logical_and.reduce([np.isfinite(np.asarray(a)).reshape(len(a), -1).all(1)
                                  for a in arrays])
