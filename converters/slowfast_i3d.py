"""PySlowFast I3D-R50 (`I3D_8x8_R50`, .pyth `model_state` or Caffe2 .pkl `blobs`) -> kvjax.

PyTorch keys (PySlowFast module names) -> kvjax state paths:
    s1.pathway0_stem.conv.weight, s1.pathway0_stem.bn.*  -> s1_conv, s1_bn
    sS.pathway0_resI.branch2.{a,b,c}.weight              -> sS_resI/{a,b,c}
    sS.pathway0_resI.branch2.{a,b,c}_bn.*                -> sS_resI/{a,b,c}_bn
    sS.pathway0_resI.branch1.weight, branch1_bn.*        -> sS_resI/branch1, branch1_bn
    head.projection.weight (out, in), .bias              -> head/kernel (in, out), head/bias

Caffe2 blob names (the same tensors as PySlowFast's `get_name_convert_func` renames them):
    conv1_w, res_conv1_bn_{s,b,rm,riv}                   -> s1.pathway0_stem.conv / .bn
    resS_I_branch2{a,b,c}_w, resS_I_branch2{a,b,c}_bn_{s,b,rm,riv}
    resS_I_branch1_w, resS_I_branch1_bn_{s,b,rm,riv}
    pred_w, pred_b                                       -> head.projection
with bn suffixes s -> weight, b -> bias, rm -> running_mean, riv -> running_var (PySlowFast
reads riv as the running variance). Optimizer blobs (*_momentum, lr, model_iter) are dropped
when the file is read.

The classifier head is `head.projection` (`HEAD`; Caffe2 `pred_w`, `pred_b`). A file without
it (a backbone kept for its features) converts to the network without `head` (num_classes
0), whose last layer is `s5`; a file with only one of its two tensors is refused, naming the
other.
"""
from __future__ import annotations

from converters.tables import Table, batchnorm, classifier_config, conv3d, linear, vector
from kvjax.models import slowfast_i3d as model

HEAD = ("head.projection.weight", "head.projection.bias")

_BN_C2 = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _blocks():
    """(stage number, block index, has branch1) in order."""
    cin = model.STEM_OUT
    for stage, (blocks, cout, _, stride, _) in model.STAGES.items():
        for i in range(blocks):
            yield int(stage[1:]), i, i == 0 and (cin != cout or stride != 1)
            cin = cout


def caffe2_names() -> dict[str, str]:
    """{Caffe2 blob name: PySlowFast state_dict key} for every weight of the network."""
    def bn(c2, pt):
        return {f"{c2}_{s}": f"{pt}.{t}" for s, t in _BN_C2.items()}
    names = {"conv1_w": "s1.pathway0_stem.conv.weight",
             **bn("res_conv1_bn", "s1.pathway0_stem.bn"),
             "pred_w": "head.projection.weight", "pred_b": "head.projection.bias"}
    for s, i, has_branch1 in _blocks():
        c2, pt = f"res{s}_{i}", f"s{s}.pathway0_res{i}"
        for part in ("a", "b", "c"):
            names[f"{c2}_branch2{part}_w"] = f"{pt}.branch2.{part}.weight"
            names.update(bn(f"{c2}_branch2{part}_bn", f"{pt}.branch2.{part}_bn"))
        if has_branch1:
            names[f"{c2}_branch1_w"] = f"{pt}.branch1.weight"
            names.update(bn(f"{c2}_branch1_bn", f"{pt}.branch1_bn"))
    return names


def prepare(tensors):
    """Caffe2 blobs renamed to PySlowFast keys (a PySlowFast state_dict passes unchanged)."""
    if "conv1_w" not in tensors:
        return tensors
    names = caffe2_names()
    return {names.get(k, k): v for k, v in tensors.items()}


def config(tensors, meta=None) -> dict:
    return classifier_config(tensors, *HEAD, ndim=2)


def mapping(num_classes: int = model.NUM_CLASSES):
    m = {"s1.pathway0_stem.conv.weight": (("s1_conv", "kernel"), conv3d),
         **batchnorm("s1.pathway0_stem.bn", ("s1_bn",))}
    for s, i, has_branch1 in _blocks():
        pt, path = f"s{s}.pathway0_res{i}", f"s{s}_res{i}"
        for part in ("a", "b", "c"):
            m[f"{pt}.branch2.{part}.weight"] = ((path, part, "kernel"), conv3d)
            m.update(batchnorm(f"{pt}.branch2.{part}_bn", (path, f"{part}_bn")))
        if has_branch1:
            m[f"{pt}.branch1.weight"] = ((path, "branch1", "kernel"), conv3d)
            m.update(batchnorm(f"{pt}.branch1_bn", (path, "branch1_bn")))
    if num_classes:
        m["head.projection.weight"] = (("head", "kernel"), linear)
        m["head.projection.bias"] = (("head", "bias"), vector)
    return m


TABLES = {"slowfast-i3d-r50": Table("slowfast-i3d-r50", config, mapping, model.make_net,
                                    source="facebookresearch/SlowFast ResNet (I3D_8x8_R50)",
                                    prepare=prepare, head=HEAD)}
