"""Visualise the kernels of your own Flax NNX 3D CNN: no registry entry needed.

    python examples/02_own_flax_model.py [--quick]

`kvjax.visualize` takes any pure JAX function of one video f32[T,H,W,3] in [0,1]. Wrap your
model's forward pass to the layer you want in `jax.tree_util.Partial(fn, state)`: the weights
then reach the compiled program as arguments (XLA would constant-fold closed-over weights).
"""
import argparse

import jax
import jax.numpy as jnp
from flax import nnx

import kvjax


class TinyVideoNet(nnx.Module):
    """conv3d(3->8, 3x5x5, stride 1,2,2) -> ReLU -> conv3d(8->16, 3x3x3) -> ReLU."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 5, 5), strides=(1, 2, 2), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3, 3), rngs=rngs)

    def __call__(self, x):  # f32[N, T, H, W, 3] in [-1, 1]
        return nnx.relu(self.conv2(nnx.relu(self.conv1(x))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    model = TinyVideoNet(nnx.Rngs(0))  # or your trained model
    graphdef, state = nnx.split(model)

    def conv2_features(state, video):  # one video f32[T,H,W,3] in [0,1] -> f32[t,h,w,16]
        return nnx.merge(graphdef, state)(video[None] * 2.0 - 1.0)[0]

    features = jax.tree_util.Partial(conv2_features, state)
    steps = dict(steps1=10, steps2=10) if args.quick else dict(steps1=150, steps2=200)
    config = kvjax.Config("fast", size=(8, 32, 32), **steps)
    res = kvjax.visualize(features, kernels=[0, 3, 7], config=config, key=jax.random.key(1))
    gain = res.summary["activation"] - res.summary["activation_start"]
    for i, k in enumerate(res.kernels):
        print(f"kernel {k}: activation gained {float(gain[i]):.3g}; motion "
              f"{float(res.summary['direction_deg'][i]):.0f} deg, "
              f"{float(res.summary['speed_px_per_frame'][i]):.2f} px/frame")
    assert bool(jnp.all(jnp.isfinite(res.videos)))


if __name__ == "__main__":
    main()
