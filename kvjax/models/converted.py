"""Building a model from a converted checkpoint (architectures without built-in weights)."""
from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any, Callable, Mapping

from flax import nnx

from kvjax.errors import CorruptFileError, KvjaxError, unknown_name
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
    a config it cannot take is a CorruptFileError (`check_config`); every parameter must be in
    the checkpoint with its shape, or WeightsMismatchError names them.
    """
    if checkpoint is None:
        raise need_checkpoint(arch)
    saved_arch, state, manifest = model_checkpoint.load(checkpoint)
    if saved_arch != arch:
        raise KvjaxError(f"{checkpoint} holds a converted {saved_arch!r} checkpoint, not "
                         f"{arch!r}: load it as model {saved_arch!r}, or convert the source "
                         f"again with --arch {arch}")
    config = check_config(manifest.get("config"), make_net, f"{checkpoint}'s manifest")
    try:
        net = nnx.eval_shape(lambda: make_net(**config))
    except (TypeError, ValueError, ArithmeticError) as e:  # a value the model cannot take
        raise CorruptFileError(f"{checkpoint}'s manifest config {config} does not build a "
                               f"{arch!r} model: {str(e).splitlines()[0]}") from None
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(net))]
    mapping = {"/".join(map(str, p)): (tuple(p), weights.identity) for p in paths}
    weights.assign(net, weights.flatten(state), mapping, source=str(checkpoint), arch=arch)
    return net, manifest


def check_config(config: Any, make_net: Callable[..., nnx.Module], where: str) -> dict:
    """`config` (a manifest's "config") as keyword arguments of `make_net`, checked.

    A CorruptFileError names a config that is not a mapping, a field that is not one of
    `make_net`'s parameters (with the valid ones), a parameter without default it lacks, and a
    value whose type is not that of the parameter's default (where that is a bool, a whole
    number, a number, a string or a list of whole numbers; a whole number >= 1 for the
    widths in `_POSITIVE`, >= 0 for `num_classes`, whose 0 is a model built without its
    classifier head, as `kvjax convert` writes for a checkpoint without one).
    """
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise CorruptFileError(f"{where} has a config that is a {type(config).__name__}, not "
                               f"a mapping of {_what(make_net)} arguments")
    params = {n: p for n, p in inspect.signature(make_net).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in config.items():
        if name not in params:
            raise CorruptFileError(str(unknown_name("config field", str(name), list(params),
                                                    where=f"in {where}")))
        form = _form(name, params[name].default)
        if form is not None and not form[0](value):
            raise CorruptFileError(f"{where} has config field {name!r} = {value!r}; it must "
                                   f"be {form[1]}")
    lacking = [n for n, p in params.items() if p.default is p.empty and n not in config]
    if lacking:
        raise CorruptFileError(f"{where} has a config without {', '.join(lacking)} (needed by "
                               f"{_what(make_net)})")
    return dict(config)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# Parameters of the make_nets that must be at least 1 (widths); other whole numbers may be 0
# (VideoGPT's n_res_layers: a converted encoder without residual blocks builds; num_classes:
# a model without its classifier head).
_POSITIVE = ("n_hiddens", "embedding_dim")


def _form(name: str, default: Any) -> tuple[Callable[[Any], bool], str] | None:
    """(test, description) of the values parameter `name` with this default takes; None:
    any."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if isinstance(default, numbers.Integral) and name in _POSITIVE:
        return (lambda v: _is_int(v) and v >= 1), "a whole number >= 1"
    if isinstance(default, numbers.Integral) and name == "num_classes":
        return ((lambda v: _is_int(v) and v >= 0),
                "a whole number >= 0 (0: no classifier head)")
    if isinstance(default, numbers.Integral):
        return _is_int, "a whole number"
    if isinstance(default, numbers.Real):
        return (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)), "a number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, (list, tuple)) and all(_is_int(d) for d in default):
        return (lambda v: isinstance(v, (list, tuple)) and all(_is_int(d) for d in v),
                "a list of whole numbers")
    return None


def _what(make_net: Callable) -> str:
    fn = make_net.func if isinstance(make_net, functools.partial) else make_net
    return f"{fn.__module__}.{fn.__name__}"
