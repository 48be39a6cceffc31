"""Building a model from a converted checkpoint (architectures without built-in weights)."""
from __future__ import annotations

from typing import Callable

from flax import nnx

from kvjax.errors import KvjaxError
from kvjax.io import model_checkpoint
from kvjax.models import weights


def need_checkpoint(arch: str) -> KvjaxError:
    """The error for an architecture asked for without weights."""
    return KvjaxError(
        f"model {arch!r} has no built-in weights: convert a PyTorch checkpoint first with "
        f"`kvjax convert SRC DST --arch {arch}`, then pass the result: "
        f"load_model({arch!r}, checkpoint=DST) or --model {arch} --checkpoint DST")


def load_net(arch: str, checkpoint: str | None,
             make_net: Callable[..., nnx.Module]) -> tuple[nnx.Module, dict]:
    """(net with the checkpoint's weights, manifest) for a converted checkpoint of `arch`.

    `make_net(**manifest["config"])` builds the module (abstractly: no random init is spent);
    every parameter must be in the checkpoint with its shape, or WeightsMismatchError names them.
    """
    if checkpoint is None:
        raise need_checkpoint(arch)
    saved_arch, state, manifest = model_checkpoint.load(checkpoint)
    if saved_arch != arch:
        raise KvjaxError(f"{checkpoint} holds a converted {saved_arch!r} checkpoint, not "
                         f"{arch!r}: load it as model {saved_arch!r}, or convert the source "
                         f"again with --arch {arch}")
    config = manifest.get("config") or {}
    net = nnx.eval_shape(lambda: make_net(**config))
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(net))]
    mapping = {"/".join(map(str, p)): (tuple(p), weights.identity) for p in paths}
    weights.assign(net, weights.flatten(state), mapping, source=str(checkpoint), arch=arch)
    return net, manifest
