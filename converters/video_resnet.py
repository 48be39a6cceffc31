"""torchvision.models.video (`resnet.py`) r3d_18, mc3_18, r2plus1d_18 -> kvjax video ResNets.

Keys (torchvision module names -> kvjax state paths):
    stem.0.weight, stem.1.*                         -> stem, stem_bn          (r3d, mc3)
    stem.0.weight, stem.1.*, stem.3.weight, stem.4.* -> stem_spatial, stem_bn1, stem, stem_bn
                                                                              (r2plus1d)
    layerI.J.convK.0.weight                         -> layerI_J/convK/conv    (Conv3DSimple /
                                                                               Conv3DNoTemporal)
    layerI.J.convK.0.0.weight, .0.1.*, .0.3.weight  -> layerI_J/convK/{spatial, bn, temporal}
                                                                              (Conv2Plus1D)
    layerI.J.convK.1.*                              -> layerI_J/bnK
    layerI.0.downsample.0.weight, .1.*              -> layerI_0/downsample, downsample_bn
    fc.weight (out, in), fc.bias                    -> fc/kernel (in, out), fc/bias
BatchNorm: weight -> scale, bias, running_mean -> mean, running_var -> var;
num_batches_tracked ignored.

The classifier head is `fc` (`HEAD`). A file without it (a backbone whose `fc` was removed or
never saved, as self-supervised and feature-extractor checkpoints keep them) converts to the
network without `fc` (num_classes 0), whose last layer is `avgpool`; a file with only one of
`fc.weight`, `fc.bias` is refused, naming the other.
"""
from __future__ import annotations

import functools

from converters.tables import Table, batchnorm, classifier_config, conv3d, linear, vector
from kvjax.models import video_resnet as model

HEAD = ("fc.weight", "fc.bias")


def config(tensors, meta=None) -> dict:
    return classifier_config(tensors, *HEAD, ndim=2)


def mapping(arch: str, num_classes: int = model.NUM_CLASSES):
    m = {}
    if arch == "r2plus1d_18":
        m["stem.0.weight"] = (("stem_spatial", "kernel"), conv3d)
        m.update(batchnorm("stem.1", ("stem_bn1",)))
        m["stem.3.weight"] = (("stem", "kernel"), conv3d)
        m.update(batchnorm("stem.4", ("stem_bn",)))
    else:
        m["stem.0.weight"] = (("stem", "kernel"), conv3d)
        m.update(batchnorm("stem.1", ("stem_bn",)))
    cin = 64
    for i, (planes, stride) in enumerate(model.STAGES, start=1):
        for j in range(model.BLOCKS):
            t, p = f"layer{i}.{j}", (f"layer{i}_{j}",)
            for k in (1, 2):
                if arch == "r2plus1d_18":
                    m[f"{t}.conv{k}.0.0.weight"] = ((*p, f"conv{k}", "spatial", "kernel"), conv3d)
                    m.update(batchnorm(f"{t}.conv{k}.0.1", (*p, f"conv{k}", "bn")))
                    m[f"{t}.conv{k}.0.3.weight"] = ((*p, f"conv{k}", "temporal", "kernel"), conv3d)
                else:
                    m[f"{t}.conv{k}.0.weight"] = ((*p, f"conv{k}", "conv", "kernel"), conv3d)
                m.update(batchnorm(f"{t}.conv{k}.1", (*p, f"bn{k}")))
            if j == 0 and (stride != 1 or cin != planes):
                m[f"{t}.downsample.0.weight"] = ((*p, "downsample", "kernel"), conv3d)
                m.update(batchnorm(f"{t}.downsample.1", (*p, "downsample_bn")))
            cin = planes
    if num_classes:
        m["fc.weight"] = (("fc", "kernel"), linear)
        m["fc.bias"] = (("fc", "bias"), vector)
    return m


TABLES = {arch: Table(arch, config, functools.partial(mapping, arch),
                      functools.partial(model.make_net, arch),
                      source="torchvision.models.video.resnet", head=HEAD)
          for arch in model.KINDS}
