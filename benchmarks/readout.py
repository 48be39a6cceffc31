"""Stage 1 step time with and without the one-channel readout, on the non-I3D models.

    PYTHONPATH=.:benchmarks python benchmarks/readout.py [--kernels 4] [--steps 16]

For each (model, layer) below, stage 1 (`fast` preset settings, the video at the model's
input size, K kernels vmapped in one program) runs `--steps` steps twice: with
`Stage1Config(one_channel=True)` (the layer computed as each kernel's channel alone: a block's
last convolution with one output channel, plus the shortcut's channel) and with
`one_channel=False` (the whole layer, then the channel read from it). Random weights: the
time does not depend on them, and these models ship no weights. The programs after the first
are timed (the first holds the compilation; on CPU a program runs four steps, so 16 steps
give three timed programs: one alone varied by 5-7% here). Results:
benchmarks/results/readout_<stamp>.json.
"""
from __future__ import annotations

import argparse
import os

from kvjax import stage1
from kvjax.models import flownets, slowfast_i3d, video_resnet
from kvjax.models.base import VideoModel
from machine import describe, save_results
from stage1 import time_optimize

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (model, net builder, input size, value range, layers)
CASES = [
    ("r3d_18", lambda: video_resnet.make_net("r3d_18"), video_resnet.INPUT_SIZE,
     video_resnet.VALUE_RANGE, ["layer1/0", "layer2/0", "layer3", "layer4"]),
    ("r2plus1d_18", lambda: video_resnet.make_net("r2plus1d_18"), video_resnet.INPUT_SIZE,
     video_resnet.VALUE_RANGE, ["layer2/0", "layer4"]),
    ("slowfast-i3d-r50", slowfast_i3d.make_net, slowfast_i3d.INPUT_SIZE,
     slowfast_i3d.VALUE_RANGE, ["s2", "s3/res0", "s4/res5"]),
    ("flownets", flownets.make_net, (2, 192, 256), flownets.VALUE_RANGE,
     ["conv3_1", "conv6_1", "deconv3"]),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--models", default=",".join(c[0] for c in CASES))
    args = p.parse_args(argv)
    out = {"machine": describe(), "args": vars(args), "rows": []}
    print("| model | layer | K | whole layer s/step | one channel s/step | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    for name, make, size, value_range, layers in CASES:
        if name not in args.models.split(","):
            continue
        model = VideoModel(name, make(), size, value_range)
        for layer in layers:
            f = model.features(layer, input_size=size)
            row = {"model": name, "layer": layer, "K": args.kernels, "size": size}
            for one in (False, True):
                cfg = stage1.Stage1Config.preset("fast", size=size, steps=args.steps,
                                                 progress_every=1, chunk_size=args.kernels,
                                                 one_channel=one)
                first, _, step = time_optimize(f, args.kernels, cfg)
                key = "one_channel" if one else "whole_layer"
                row[f"{key}_step_s"], row[f"{key}_compile_and_first_s"] = step, first
            row["speedup"] = row["whole_layer_step_s"] / row["one_channel_step_s"]
            row["loadavg"] = os.getloadavg()
            out["rows"].append(row)
            print(f"| {name} | {layer} | {args.kernels} | {row['whole_layer_step_s']:.3f} | "
                  f"{row['one_channel_step_s']:.3f} | {row['speedup']:.2f} |", flush=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    save_results(out, "readout", RESULTS)


if __name__ == "__main__":
    main()
