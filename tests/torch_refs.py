"""Reference PyTorch modules with the upstream key layouts, and parity helpers.

Written here (torchvision does not import beside this torch); each `forward` returns
{kvjax layer name: activation (N, C, T, H, W)} so every exposed layer can be compared.
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TOL = 1e-4  # max abs error, as a fraction of the activation's scale (max |reference|)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, random BN statistics, eval mode (so BN uses the stats)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.num_batches_tracked.fill_(7)
    return module.eval()


def save_state_dict(module: nn.Module, path, wrap=None) -> str:
    sd = module.state_dict()
    torch.save(sd if wrap is None else wrap(sd), path)
    return str(path)


def random_module(cls: Callable[..., nn.Module], *args, seed: int = 0, **kwargs) -> nn.Module:
    """`cls(*args, **kwargs)` initialised under torch.manual_seed(seed), then `randomize`d."""
    torch.manual_seed(seed)
    return randomize(cls(*args, **kwargs), seed)


class Conversion(NamedTuple):
    """A reference module saved as an upstream checkpoint and run through `kvjax convert`."""
    model: Any    # the kvjax VideoModel loaded from `dst`
    src: str      # the PyTorch checkpoint written
    dst: str      # the converted checkpoint (a folder)
    summary: str  # what `kvjax convert` reported


def convert_reference(ref: nn.Module, folder, arch: str, filename: str,
                      wrap: Callable[[dict], Any] | None = None) -> Conversion:
    """Save `ref`'s state dict as folder/filename (inside `wrap(state_dict)`, the upstream
    checkpoint's dict, when given), convert it into folder/ck with --arch `arch`, load it."""
    import kvjax
    from converters import commands
    src = save_state_dict(ref, os.path.join(folder, filename), wrap)
    dst = os.path.join(folder, "ck")
    summary = commands.convert(src, dst, arch)
    return Conversion(kvjax.load_model(arch, checkpoint=dst), src, dst, summary)


def to_channels_last(a: torch.Tensor) -> np.ndarray:
    a = a.detach().numpy()
    return a.transpose(0, 2, 3, 4, 1) if a.ndim == 5 else a


def all_layers(model, x_model_range: np.ndarray, until: str | None = None) -> dict:
    """Every layer kvjax's `model` exposes for input f32[N,T,H,W,3] (already in its value
    range), in one jitted forward pass; `until` stops after that layer."""
    import jax
    from flax import nnx
    from kvjax.models.base import Taps

    class Collect(Taps):
        def __call__(self, name, x, read="post-activation"):
            self.values[name] = x
            if name == until:
                raise StopIteration
            return x

    graphdef, state = nnx.split(model.net)

    @jax.jit
    def run(state, x):
        taps = Collect()
        try:
            nnx.merge(graphdef, state)(x, taps)
        except StopIteration:
            pass
        return taps.values
    return jax.tree_util.tree_map(np.asarray, run(state, x_model_range))


def compare(ours: dict, ref: dict, names=None, tol: float = TOL) -> dict:
    """{name: max abs error / scale} for every name; asserts each is within `tol`."""
    names = list(ref) if names is None else names
    errs, bad = {}, []
    for n in names:
        r = to_channels_last(ref[n]) if isinstance(ref[n], torch.Tensor) else ref[n]
        o = ours[n]
        assert o.shape == r.shape, f"{n}: ours {o.shape}, reference {r.shape}"
        scale = max(float(np.abs(r).max()), 1e-12)
        errs[n] = float(np.abs(o - r).max()) / scale
        if errs[n] > tol:
            bad.append(f"{n}: {errs[n]:.3g}")
    assert not bad, "layers beyond tolerance: " + ", ".join(bad)
    worst = max(errs, key=errs.get)
    print(f"parity: {len(errs)} layers, max error {errs[worst]:.2e} of scale ({worst})")
    return errs


# ------------------------------------------------------------------------------------ C3D

class C3D(nn.Module):
    """DavideA/c3d-pytorch's C3D (same module names, hence the same state_dict keys)."""

    def __init__(self, num_classes: int = 487):
        super().__init__()
        c = lambda i, o: nn.Conv3d(i, o, kernel_size=(3, 3, 3), padding=(1, 1, 1))  # noqa
        self.conv1, self.conv2 = c(3, 64), c(64, 128)
        self.conv3a, self.conv3b = c(128, 256), c(256, 256)
        self.conv4a, self.conv4b = c(256, 512), c(512, 512)
        self.conv5a, self.conv5b = c(512, 512), c(512, 512)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.pool3 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.pool4 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 1, 1))
        self.fc6, self.fc7 = nn.Linear(8192, 4096), nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def forward(self, x):
        out = {}
        for convs, pool in ((("conv1",), "pool1"), (("conv2",), "pool2"),
                            (("conv3a", "conv3b"), "pool3"), (("conv4a", "conv4b"), "pool4"),
                            (("conv5a", "conv5b"), "pool5")):
            for c in convs:
                x = out[f"{c}/conv"] = getattr(self, c)(x)
                x = out[c] = F.relu(x)
            x = out[pool] = getattr(self, pool)(x)
        if x.shape[2:] != (1, 4, 4):
            return out
        x = x.reshape(-1, 8192)
        for fc in ("fc6", "fc7"):
            x = out[f"{fc}/linear"] = getattr(self, fc)(x)
            x = out[fc] = F.relu(x)
        out["fc8"] = self.fc8(x)
        return out


# ------------------------------------------------------------------- piergiaj pytorch-i3d

def _same_pads(size, k, s):
    """pytorch-i3d's compute_pad for one axis (TF SAME), as (front, back)."""
    pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x, kernel, stride):
    (pt, pt2), (ph, ph2), (pw, pw2) = (_same_pads(n, k, s) for n, k, s
                                       in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (pw, pw2, ph, ph2, pt, pt2))  # zeros, as pytorch-i3d does


class MaxPool3dSamePadding(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    """pytorch-i3d's Unit3D: conv3d (+bias only when there is no BN) -> bn -> relu."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True,
                 bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x, out=None, name=None):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if out is not None:
            out[f"{name}/conv"] = x
        if self.bn is not None:
            x = self.bn(x)
        if self.relu:
            x = F.relu(x)
        if out is not None:
            out[name] = x
        return x


_I3D_BRANCHES = ("Branch_0/Conv3d_0a_1x1", "Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3",
                 "Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3", "Branch_3/Conv3d_0b_1x1")


class InceptionModule(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x, out, name):
        n = [f"{name}/{b}" for b in _I3D_BRANCHES]
        b0 = self.b0(x, out, n[0])
        b1 = self.b1b(self.b1a(x, out, n[1]), out, n[2])
        b2 = self.b2b(self.b2a(x, out, n[3]), out, n[4])
        b3 = self.b3b(self.b3a(x), out, n[5])
        x = out[name] = torch.cat([b0, b1, b2, b3], dim=1)
        return x


I3D_MIXED = {"Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
             "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
             "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
             "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
             "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
             "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
             "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
             "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
             "Mixed_5c": (832, (384, 192, 384, 48, 128, 128))}


class InceptionI3d(nn.Module):
    """piergiaj's InceptionI3d: end points added as modules by name, then avg_pool, logits."""

    def __init__(self, num_classes=400):
        super().__init__()
        pool = lambda k, s: MaxPool3dSamePadding(kernel_size=k, stride=s, padding=0)  # noqa
        self.order = []
        def add(name, m):  # noqa
            self.order.append(name)
            self.add_module(name, m)
        add("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2)))
        add("MaxPool3d_2a_3x3", pool((1, 3, 3), (1, 2, 2)))
        add("Conv3d_2b_1x1", Unit3D(64, 64))
        add("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3)))
        add("MaxPool3d_3a_3x3", pool((1, 3, 3), (1, 2, 2)))
        for name in ("Mixed_3b", "Mixed_3c"):
            add(name, InceptionModule(*I3D_MIXED[name]))
        add("MaxPool3d_4a_3x3", pool((3, 3, 3), (2, 2, 2)))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            add(name, InceptionModule(*I3D_MIXED[name]))
        add("MaxPool3d_5a_2x2", pool((2, 2, 2), (2, 2, 2)))
        for name in ("Mixed_5b", "Mixed_5c"):
            add(name, InceptionModule(*I3D_MIXED[name]))
        self.avg_pool = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x, until=None):
        out = {}
        for name in self.order:
            m = getattr(self, name)
            if isinstance(m, nn.MaxPool3d):
                x = out[name] = m(x)
            else:
                x = m(x, out, name)
            if name == until:
                return out
        out["Logits"] = self.logits(self.dropout(self.avg_pool(x)))
        return out


def builtin_i3d_state_dict(i3d_model) -> dict:
    """The built-in i3d's weights under pytorch-i3d's names and layouts (BN scale = 1)."""
    from flax import nnx

    from kvjax.models import pytorch_i3d
    flat = {tuple(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(i3d_model.net))}
    sd = {}
    for _, torch_name, path in pytorch_i3d.units():
        k = flat[(*path, "conv", "kernel")]
        sd[f"{torch_name}.conv3d.weight"] = torch.from_numpy(k.transpose(4, 3, 0, 1, 2).copy())
        c = k.shape[-1]
        sd[f"{torch_name}.bn.weight"] = torch.ones(c)
        for ours, theirs in (("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
            sd[f"{torch_name}.bn.{theirs}"] = torch.from_numpy(flat[(*path, "bn", ours)].copy())
        sd[f"{torch_name}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["logits.conv3d.weight"] = torch.from_numpy(
        flat[("Logits", "kernel")].transpose(4, 3, 0, 1, 2).copy())
    sd["logits.conv3d.bias"] = torch.from_numpy(flat[("Logits", "bias")].copy())
    return sd


# ------------------------------------------------------------- torchvision video ResNets

class Conv3DSimple(nn.Conv3d):
    def __init__(self, cin, cout, mid=None, stride=1, padding=1):
        super().__init__(cin, cout, kernel_size=(3, 3, 3), stride=stride, padding=padding,
                         bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return (stride, stride, stride)


class Conv3DNoTemporal(nn.Conv3d):
    def __init__(self, cin, cout, mid=None, stride=1, padding=1):
        super().__init__(cin, cout, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                         padding=(0, padding, padding), bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return (1, stride, stride)


class Conv2Plus1D(nn.Sequential):
    def __init__(self, cin, cout, mid, stride=1, padding=1):
        super().__init__(
            nn.Conv3d(cin, mid, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                      padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, kernel_size=(3, 1, 1), stride=(stride, 1, 1),
                      padding=(padding, 0, 0), bias=False))

    @staticmethod
    def get_downsample_stride(stride):
        return (stride, stride, stride)


def _run_conv(conv, x, out, name):
    """A conv builder's output, recording (2+1)D's inner activations under kvjax's names."""
    if isinstance(conv, Conv2Plus1D):
        x = out[f"{name}/spatial"] = conv[0](x)
        x = out[f"{name}/mid"] = F.relu(conv[1](x))
        return conv[3](x)
    return conv(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)
        super().__init__()
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride),
                                   nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes),
                                   nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x, out, name):
        y = out[f"{name}/conv1/conv"] = _run_conv(self.conv1[0], x, out, f"{name}/conv1")
        y = out[f"{name}/conv1"] = F.relu(self.conv1[1](y))
        y = out[f"{name}/conv2/conv"] = _run_conv(self.conv2[0], y, out, f"{name}/conv2")
        res = x if self.downsample is None else self.downsample(x)
        out[name] = F.relu(self.conv2[1](y) + res)
        return out[name]


class BasicStem(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2),
                                   padding=(1, 3, 3), bias=False),
                         nn.BatchNorm3d(64), nn.ReLU(inplace=True))


class R2Plus1dStem(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv3d(3, 45, kernel_size=(1, 7, 7), stride=(1, 2, 2),
                                   padding=(0, 3, 3), bias=False),
                         nn.BatchNorm3d(45), nn.ReLU(inplace=True),
                         nn.Conv3d(45, 64, kernel_size=(3, 1, 1), stride=(1, 1, 1),
                                   padding=(1, 0, 0), bias=False),
                         nn.BatchNorm3d(64), nn.ReLU(inplace=True))


VIDEO_RESNETS = {"r3d_18": (BasicStem, [Conv3DSimple] * 4),
                 "mc3_18": (BasicStem, [Conv3DSimple] + [Conv3DNoTemporal] * 3),
                 "r2plus1d_18": (R2Plus1dStem, [Conv2Plus1D] * 4)}
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class VideoResNet(nn.Module):
    """torchvision.models.video.resnet.VideoResNet with BasicBlock, layers [2, 2, 2, 2]."""

    def __init__(self, arch, num_classes=400):
        super().__init__()
        stem, makers = VIDEO_RESNETS[arch]
        self.inplanes = 64
        self.stem = stem()
        self.layer1 = self._make_layer(makers[0], 64, 2, stride=1)
        self.layer2 = self._make_layer(makers[1], 128, 2, stride=2)
        self.layer3 = self._make_layer(makers[2], 256, 2, stride=2)
        self.layer4 = self._make_layer(makers[3], 512, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, conv_builder, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            ds_stride = conv_builder.get_downsample_stride(stride)
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=ds_stride, bias=False),
                nn.BatchNorm3d(planes))
        layers = [BasicBlock(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, conv_builder) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        """x: (N, 3, T, H, W) already normalised with the Kinetics mean/std."""
        out = {}
        if isinstance(self.stem, R2Plus1dStem):
            x = out["stem/spatial"] = self.stem[0](x)
            x = out["stem/mid"] = F.relu(self.stem[1](x))
            x = out["stem/conv"] = self.stem[3](x)
            x = out["stem"] = F.relu(self.stem[4](x))
        else:
            x = out["stem/conv"] = self.stem[0](x)
            x = out["stem"] = F.relu(self.stem[1](x))
        for i in range(1, 5):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                x = block(x, out, f"layer{i}/{j}")
            out[f"layer{i}"] = x
        x = out["avgpool"] = self.avgpool(x)
        out["fc"] = self.fc(x.flatten(1))
        return out


# ------------------------------------------------------------ PySlowFast I3D ResNet-50

class ResNetBasicStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 64, [5, 7, 7], stride=[1, 2, 2], padding=[2, 3, 3], bias=False)
        self.bn = nn.BatchNorm3d(64, eps=1e-5, momentum=0.1)
        self.relu = nn.ReLU(True)
        self.pool_layer = nn.MaxPool3d(kernel_size=[1, 3, 3], stride=[1, 2, 2], padding=[0, 1, 1])

    def forward(self, x, out):
        x = out["s1/conv"] = self.conv(x)
        x = out["s1/relu"] = F.relu(self.bn(x))
        x = out["s1"] = self.pool_layer(x)
        return x


class VideoModelStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.pathway0_stem = ResNetBasicStem()


class BottleneckTransform(nn.Module):
    def __init__(self, cin, cout, kt, stride, inner):
        super().__init__()
        self.a = nn.Conv3d(cin, inner, [kt, 1, 1], stride=[1, 1, 1], padding=[kt // 2, 0, 0],
                           bias=False)
        self.a_bn = nn.BatchNorm3d(inner)
        self.a_relu = nn.ReLU(True)
        self.b = nn.Conv3d(inner, inner, [1, 3, 3], stride=[1, stride, stride], padding=[0, 1, 1],
                           bias=False)
        self.b_bn = nn.BatchNorm3d(inner)
        self.b_relu = nn.ReLU(True)
        self.c = nn.Conv3d(inner, cout, [1, 1, 1], bias=False)
        self.c_bn = nn.BatchNorm3d(cout)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, kt, stride, inner):
        super().__init__()
        if cin != cout or stride != 1:
            self.branch1 = nn.Conv3d(cin, cout, 1, stride=[1, stride, stride], bias=False)
            self.branch1_bn = nn.BatchNorm3d(cout)
        self.branch2 = BottleneckTransform(cin, cout, kt, stride, inner)
        self.relu = nn.ReLU(True)

    def forward(self, x, out, name):
        t = self.branch2
        y = out[f"{name}/a/conv"] = t.a(x)
        y = out[f"{name}/a"] = F.relu(t.a_bn(y))
        y = out[f"{name}/b/conv"] = t.b(y)
        y = out[f"{name}/b"] = F.relu(t.b_bn(y))
        y = out[f"{name}/c/conv"] = t.c(y)
        y = t.c_bn(y)
        res = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        out[name] = F.relu(res + y)
        return out[name]


SLOWFAST_STAGES = {"s2": (3, 256, 64, 1, [3, 3, 3]), "s3": (4, 512, 128, 2, [3, 1, 3, 1]),
                   "s4": (6, 1024, 256, 2, [3, 1, 3, 1, 3, 1]), "s5": (3, 2048, 512, 2, [1, 3, 1])}


class ResStage(nn.Module):
    def __init__(self, cin, blocks, cout, inner, stride, kts):
        super().__init__()
        self.n = blocks
        for i in range(blocks):
            self.add_module(f"pathway0_res{i}",
                            ResBlock(cin if i == 0 else cout, cout, kts[i], stride if i == 0 else 1,
                                     inner))


class ResNetBasicHead(nn.Module):
    def __init__(self, num_classes, pool=(4, 7, 7)):
        super().__init__()
        self.pathway0_avgpool = nn.AvgPool3d(list(pool), stride=1)
        self.dropout = nn.Dropout(0.5)
        self.projection = nn.Linear(2048, num_classes, bias=True)
        self.act = nn.Softmax(dim=4)


class SlowFastResNet(nn.Module):
    """PySlowFast `ResNet` built from I3D_8x8_R50 (single pathway, same module names)."""

    def __init__(self, num_classes=400):
        super().__init__()
        self.s1 = VideoModelStem()
        cin = 64
        for stage, (blocks, cout, inner, stride, kts) in SLOWFAST_STAGES.items():
            self.add_module(stage, ResStage(cin, blocks, cout, inner, stride, kts))
            cin = cout
        self.pathway0_pool = nn.MaxPool3d(kernel_size=[2, 1, 1], stride=[2, 1, 1], padding=[0, 0, 0])
        self.head = ResNetBasicHead(num_classes)

    def forward(self, x, until=None):
        out = {}
        x = self.s1.pathway0_stem(x, out)
        for stage in SLOWFAST_STAGES:
            st = getattr(self, stage)
            for i in range(st.n):
                x = getattr(st, f"pathway0_res{i}")(x, out, f"{stage}/res{i}")
            out[stage] = x
            if stage == "s2":
                x = out["s2/pool"] = self.pathway0_pool(x)
            if stage == until:
                return out
        x = self.head.pathway0_avgpool(x).permute(0, 2, 3, 4, 1)
        out["head"] = self.head.projection(x).permute(0, 4, 1, 2, 3)  # logits, before softmax
        return out


# --------------------------------------------------------------------- VideoGPT VQ-VAE

def _shift_dim(x, src, dest):
    """VideoGPT's utils.shift_dim: move axis src to dest, keeping the others in order."""
    n = x.dim()
    src, dest = src % n, dest % n
    dims = [i for i in range(n) if i != src]
    dims.insert(dest, src)
    return x.permute(dims).contiguous()


class SamePadConv3d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, bias=True):
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        s = (stride,) * 3 if isinstance(stride, int) else stride
        total = [kk - ss for kk, ss in zip(k, s)]
        self.pad_input = sum([(p // 2 + p % 2, p // 2) for p in total[::-1]], tuple())
        self.conv = nn.Conv3d(cin, cout, k, stride=s, padding=0, bias=bias)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad_input))


class MultiHeadAxialAttention(nn.Module):
    """VideoGPT's MultiHeadAttention(attn_type='axial', causal=False) in eval mode."""

    def __init__(self, dim, n_head, axial_dim):
        super().__init__()
        self.n_head, self.d = n_head, dim // n_head
        self.axial_dim = 2 + 3 + 1 + axial_dim  # (b, heads, t, h, w, d) index
        self.w_qs = nn.Linear(dim, dim, bias=False)
        self.w_ks = nn.Linear(dim, dim, bias=False)
        self.w_vs = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, dim, bias=True)

    def forward(self, x):  # x (b, t, h, w, c)
        def heads(y):
            return _shift_dim(y.view(*y.shape[:-1], self.n_head, self.d), -2, 1)
        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        q = _shift_dim(q, self.axial_dim, -2).flatten(end_dim=-3)
        k = _shift_dim(k, self.axial_dim, -2).flatten(end_dim=-3)
        v = _shift_dim(v, self.axial_dim, -2)
        old_shape = list(v.shape)
        v = v.flatten(end_dim=-3)
        attn = F.softmax(q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1]), dim=-1)
        out = _shift_dim((attn @ v).view(*old_shape), -2, self.axial_dim)
        return self.fc(_shift_dim(out, 1, -2).flatten(start_dim=-2))


class AxialBlock(nn.Module):
    def __init__(self, n_hiddens, n_head):
        super().__init__()
        self.attn_w = MultiHeadAxialAttention(n_hiddens, n_head, -2)
        self.attn_h = MultiHeadAxialAttention(n_hiddens, n_head, -3)
        self.attn_t = MultiHeadAxialAttention(n_hiddens, n_head, -4)

    def forward(self, x):
        x = _shift_dim(x, 1, -1)
        x = self.attn_w(x) + self.attn_h(x) + self.attn_t(x)
        return _shift_dim(x, -1, 1)


class AttentionResidualBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm3d(n), nn.ReLU(), SamePadConv3d(n, n // 2, 3, bias=False),
            nn.BatchNorm3d(n // 2), nn.ReLU(), SamePadConv3d(n // 2, n, 1, bias=False),
            nn.BatchNorm3d(n), nn.ReLU(), AxialBlock(n, 2))

    def forward(self, x, out, name):
        b = self.block
        y = out[f"{name}/conv3/conv"] = b[2](F.relu(b[0](x)))
        y = out[f"{name}/conv3"] = F.relu(b[3](y))
        y = out[f"{name}/conv1/conv"] = b[5](y)
        y = out[f"{name}/conv1"] = F.relu(b[6](y))
        y = out[f"{name}/attn"] = b[8](y)
        out[name] = x + y
        return out[name]


class VideoGPTEncoder(nn.Module):
    def __init__(self, n_hiddens, n_res_layers, downsample):
        super().__init__()
        n_times = np.array([int(np.log2(d)) for d in downsample])
        self.convs = nn.ModuleList()
        for i in range(n_times.max()):
            cin = 3 if i == 0 else n_hiddens
            stride = tuple(2 if d > 0 else 1 for d in n_times)
            self.convs.append(SamePadConv3d(cin, n_hiddens, 4, stride=stride))
            n_times -= 1
        self.conv_last = SamePadConv3d(cin, n_hiddens, kernel_size=3)
        self.res_stack = nn.Sequential(*[AttentionResidualBlock(n_hiddens)
                                         for _ in range(n_res_layers)],
                                       nn.BatchNorm3d(n_hiddens), nn.ReLU())


class VQVAE(nn.Module):
    """The parts of VideoGPT's VQVAE whose keys a checkpoint holds (decoder reduced to one conv)."""

    def __init__(self, n_hiddens=240, n_res_layers=4, downsample=(4, 4, 4), embedding_dim=256,
                 n_codes=32):
        super().__init__()
        self.encoder = VideoGPTEncoder(n_hiddens, n_res_layers, downsample)
        self.decoder = nn.Module()
        self.decoder.res_stack = nn.Sequential(nn.BatchNorm3d(n_hiddens))
        self.pre_vq_conv = SamePadConv3d(n_hiddens, embedding_dim, 1)
        self.post_vq_conv = SamePadConv3d(embedding_dim, n_hiddens, 1)
        self.codebook = nn.Module()
        self.codebook.register_buffer("embeddings", torch.randn(n_codes, embedding_dim))
        self.codebook.register_buffer("N", torch.zeros(n_codes))
        self.codebook.register_buffer("z_avg", torch.randn(n_codes, embedding_dim))

    def forward(self, x):
        out, enc = {}, self.encoder
        for i, conv in enumerate(enc.convs):
            x = out[f"convs/{i}/conv"] = conv(x)
            x = out[f"convs/{i}"] = F.relu(x)
        x = out["conv_last"] = enc.conv_last(x)
        n = len(enc.res_stack) - 2
        for i in range(n):
            x = enc.res_stack[i](x, out, f"res{i}")
        x = out["res_stack"] = F.relu(enc.res_stack[n](x))
        out["pre_vq_conv"] = self.pre_vq_conv(x)
        return out


# ------------------------------------------------------------- FlowNetPytorch FlowNetS

def _fn_conv(batch_norm, cin, cout, k=3, stride=1):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.1, inplace=True))


def _fn_deconv(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                         nn.LeakyReLU(0.1, inplace=True))


def _crop_like(x, target):
    return x if x.shape[2:] == target.shape[2:] else x[:, :, :target.size(2), :target.size(3)]


FLOWNETS_MEAN = (0.45, 0.432, 0.411)  # FlowNetPytorch main.py's, RGB (the training's)


class FlowNetS(nn.Module):
    """FlowNetPytorch's FlowNetS (same module names); forward takes a video (N,3,T,H,W) in
    [0,1], runs every consecutive pair, and returns activations as (N, C, T-1, h, w)."""

    def __init__(self, batch_norm=False):
        super().__init__()
        bn = batch_norm
        self.conv1 = _fn_conv(bn, 6, 64, 7, 2)
        self.conv2 = _fn_conv(bn, 64, 128, 5, 2)
        self.conv3 = _fn_conv(bn, 128, 256, 5, 2)
        self.conv3_1 = _fn_conv(bn, 256, 256)
        self.conv4 = _fn_conv(bn, 256, 512, stride=2)
        self.conv4_1 = _fn_conv(bn, 512, 512)
        self.conv5 = _fn_conv(bn, 512, 512, stride=2)
        self.conv5_1 = _fn_conv(bn, 512, 512)
        self.conv6 = _fn_conv(bn, 512, 1024, stride=2)
        self.conv6_1 = _fn_conv(bn, 1024, 1024)
        self.deconv5, self.deconv4 = _fn_deconv(1024, 512), _fn_deconv(1026, 256)
        self.deconv3, self.deconv2 = _fn_deconv(770, 128), _fn_deconv(386, 64)
        pf = lambda c: nn.Conv2d(c, 2, 3, 1, 1, bias=False)  # noqa
        self.predict_flow6, self.predict_flow5, self.predict_flow4 = pf(1024), pf(1026), pf(770)
        self.predict_flow3, self.predict_flow2 = pf(386), pf(194)
        up = lambda: nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=False)  # noqa
        self.upsampled_flow6_to_5, self.upsampled_flow5_to_4 = up(), up()
        self.upsampled_flow4_to_3, self.upsampled_flow3_to_2 = up(), up()

    def forward(self, video):
        n, _, t, h, w = video.shape
        v = video - torch.tensor(FLOWNETS_MEAN).view(1, 3, 1, 1, 1)
        x = torch.cat([v[:, :, :-1], v[:, :, 1:]], 1)              # (N, 6, P, H, W)
        x = x.permute(0, 2, 1, 3, 4).reshape(n * (t - 1), 6, h, w)  # pairs as batch
        out = {}
        for name in ("conv1", "conv2", "conv3", "conv3_1", "conv4", "conv4_1", "conv5",
                     "conv5_1", "conv6", "conv6_1"):
            seq = getattr(self, name)
            x = seq[0](x)
            out[f"{name}/conv"] = x.clone()  # the LeakyReLU below works in place
            for m in list(seq)[1:]:
                x = m(x)
            out[name] = x
        flow = out["flow6"] = self.predict_flow6(x)
        for level, skip in ((5, "conv5_1"), (4, "conv4_1"), (3, "conv3_1"), (2, "conv2")):
            target = out[skip]
            flow_up = _crop_like(getattr(self, f"upsampled_flow{level + 1}_to_{level}")(flow), target)
            x = out[f"deconv{level}"] = _crop_like(getattr(self, f"deconv{level}")(x), target)
            x = torch.cat((target, x, flow_up), 1)
            flow = out[f"flow{level}"] = getattr(self, f"predict_flow{level}")(x)
        return {k: a.reshape(n, t - 1, *a.shape[1:]).permute(0, 2, 1, 3, 4)
                for k, a in out.items()}
