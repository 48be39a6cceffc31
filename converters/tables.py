"""The registry of architecture tables and the layout changes they use.

A table says, for one architecture, exactly which PyTorch tensor goes where:

    Table.config(tensors, meta) -> dict    constructor arguments read off the checkpoint
                                           (e.g. num_classes from the classifier's shape,
                                           0 when the file has none of `head`; meta:
                                           recorded hyper-parameters, see load.py)
    Table.mapping(config) -> {torch name: (NNX state path, layout change)}
    Table.ignore                           glob patterns of keys known to be irrelevant
    Table.prepare(tensors) -> tensors      renames an alternative layout of the same weights
                                           (Caffe2 blob names) to the table's keys
    Table.make_net(**config)               the kvjax NNX module the state belongs to
    Table.hparams                          {name: check} of what `--hparam NAME=VALUE` may
                                           give (hyper-parameters the weights cannot tell)
    Table.head                             the keys of the classifier head: a file with none
                                           of them (a backbone saved for features, a
                                           self-supervised encoder) converts to the model
                                           without its head (config num_classes 0, see
                                           `classifier_config`); one with some of them is
                                           refused, naming those it lacks

Layout changes (PyTorch -> kvjax, channels last):

    conv3d  weight (Cout, Cin, kt, kh, kw) -> kernel (kt, kh, kw, Cin, Cout)
    conv2d  weight (Cout, Cin, kh, kw)     -> kernel (kh, kw, Cin, Cout)
    linear  weight (out, in)               -> kernel (in, out)
    vectors (bias, BN weight/bias/running stats) unchanged

Each is a `Layout`: callable (PyTorch -> kvjax) with an exact `inverse` (kvjax -> PyTorch).
A table's layout changes must all be `Layout`s, so that a conversion can be checked by
reading every stored array back into the PyTorch tensor it came from.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from typing import Any, Callable, Mapping

import numpy as np

from kvjax.errors import KvjaxError, unknown_name

# Keys every PyTorch BatchNorm writes that carry no weights.
BN_IGNORE = ("*num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A layout change PyTorch -> kvjax with its exact inverse (kvjax -> PyTorch).

    Calling it applies `forward`; `inverse` undoes it bit for bit, which is how `kvjax convert`
    checks that every stored array reads back as the PyTorch tensor it came from. `forward`
    returns an array of the wrong rank unchanged, so the shape check in `weights.assign`
    reports it with the tensor's name.
    """
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return self.forward(a)

    def __repr__(self) -> str:
        return f"Layout({self.name})"


def _permute(ndim: int, axes: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    def fn(a: np.ndarray) -> np.ndarray:
        if a.ndim != ndim:
            return a
        return np.ascontiguousarray(a.transpose(axes))
    return fn


def _identity(a: np.ndarray) -> np.ndarray:
    return a


# {PyTorch key: (kvjax state path, layout change)}
Mapping_ = dict[str, tuple[tuple, Layout]]

# (Cout, Cin, kt, kh, kw) <-> (kt, kh, kw, Cin, Cout)
conv3d = Layout("conv3d", _permute(5, (2, 3, 4, 1, 0)), _permute(5, (4, 3, 0, 1, 2)))
# (Cout, Cin, kh, kw) <-> (kh, kw, Cin, Cout)
conv2d = Layout("conv2d", _permute(4, (2, 3, 1, 0)), _permute(4, (3, 2, 0, 1)))
# (out, in) <-> (in, out)
linear = Layout("linear", _permute(2, (1, 0)), _permute(2, (1, 0)))
# biases, BatchNorm scale/bias/statistics: unchanged
vector = Layout("vector", _identity, _identity)


def batchnorm(torch_prefix: str, path: tuple, *, scale: bool = True) -> Mapping_:
    """PyTorch BatchNorm{1,2,3}d tensors -> kvjax `layers.BatchNorm` at `path`."""
    m = {f"{torch_prefix}.bias": ((*path, "bias"), vector),
         f"{torch_prefix}.running_mean": ((*path, "mean"), vector),
         f"{torch_prefix}.running_var": ((*path, "var"), vector)}
    if scale:
        m[f"{torch_prefix}.weight"] = ((*path, "scale"), vector)
    return m


def classifier_config(tensors: Mapping[str, np.ndarray], weight: str, bias: str,
                      ndim: int) -> dict:
    """The config entry read off a classifier head `weight` (classes first, `ndim` axes) and
    `bias` (classes,):

        {"num_classes": C}  C from the weight, or from the bias when only that is present
                            (the mapping then names the weight as missing)
        {"num_classes": 0}  neither is in the file: a headless checkpoint (a backbone kept
                            for its features); the model is built without the head
        {}                  the default, where neither gives a count (a weight of another
                            rank: the mapping reports its shape)
    """
    w, b = tensors.get(weight), tensors.get(bias)
    if w is None and b is None:
        return {"num_classes": 0}
    if w is not None and np.ndim(w) == ndim:
        return {"num_classes": int(np.shape(w)[0])}
    if w is None and np.ndim(b) == 1:
        return {"num_classes": int(np.shape(b)[0])}
    return {}


@dataclasses.dataclass(frozen=True)
class Table:
    arch: str
    config: Callable[..., dict]
    mapping: Callable[..., Mapping_]
    make_net: Callable
    ignore: tuple[str, ...] = BN_IGNORE
    source: str = ""  # the upstream code whose key layout this is
    prepare: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] = lambda t: t
    # `prepare` renames an alternative key layout (e.g. Caffe2 blob names) to the table's own
    require: Callable[[Mapping[str, np.ndarray], Mapping | None], None] = lambda t, meta: None
    # `require(tensors, meta)` refuses (KvjaxError) a file whose config `config` can only
    # guess; `convert` calls it, guessing an architecture does not need it
    hparams: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    # {name: check(value) -> value} of the hyper-parameters `kvjax convert --hparam` takes
    # (those `config` reads from the file's metadata); a check raises a KvjaxError naming
    # the valid form
    head: tuple[str, ...] = ()
    # the keys of the classifier head (PyTorch names, after `prepare`): all absent, the
    # model is built without it; () for an architecture without a classifier

    def irrelevant(self, key: str) -> bool:
        """Whether `key` is one the table declares irrelevant (`ignore`)."""
        return any(fnmatch.fnmatchcase(key, p) for p in self.ignore)

    def head_in(self, tensors: Mapping[str, Any]) -> str:
        """How much of the classifier head (`head`) `tensors` hold: "all", "none" or "part"
        ("all" for an architecture without one)."""
        have = sum(k in tensors for k in self.head)
        return "all" if have == len(self.head) else "none" if have == 0 else "part"

    def check_hparams(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """`kvjax convert --hparam` values, checked: a KvjaxError names an unknown name with
        the valid ones, or a bad value with its valid form."""
        out = {}
        for name, value in hparams.items():
            if name not in self.hparams:
                if not self.hparams:
                    raise KvjaxError(f"--arch {self.arch} takes no --hparam (got {name!r}): "
                                     f"its config is read from the tensors' shapes")
                raise unknown_name("hyper-parameter", name, sorted(self.hparams),
                                   where=f"for --arch {self.arch}")
            try:
                out[name] = self.hparams[name](value)
            except KvjaxError as e:
                raise KvjaxError(f"--hparam {e}") from None
        return out


# arch -> module under converters/ that defines TABLE (imported on first use).
_MODULES = {"c3d": "c3d", "pytorch-i3d": "pytorch_i3d", "r3d_18": "video_resnet",
            "mc3_18": "video_resnet", "r2plus1d_18": "video_resnet",
            "slowfast-i3d-r50": "slowfast_i3d", "videogpt-vqvae": "videogpt",
            "flownets": "flownets"}


def archs() -> list[str]:
    """Architectures that `kvjax convert` can convert."""
    return sorted(_MODULES)


def parity_test(arch: str) -> str:
    """The test file (relative to the repository root) that checks `arch`'s conversion layer
    by layer against a PyTorch port of the upstream model with random weights."""
    get(arch)
    return f"tests/test_convert_{_MODULES[arch]}.py"


def get(arch: str) -> Table:
    """The table for `arch`, or a KvjaxError naming the valid architectures."""
    if arch not in _MODULES:
        raise unknown_name("architecture", arch, archs(),
                           hint="these are the architectures `kvjax convert --arch` knows")
    mod = importlib.import_module(f"converters.{_MODULES[arch]}")
    return mod.TABLES[arch]
