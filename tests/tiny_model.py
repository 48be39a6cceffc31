"""The tiny one-layer model the stage-1 and sharding tests optimise (imported by both, and by
the sharding tests' subprocesses): a 2x3x3 conv3d (3 -> C channels) on videos of SIZE, ReLU."""
import jax

from kvjax import ops, stage1, transforms

SIZE = (4, 12, 12)
C = 4


def conv_relu(w, video):
    """f32[T,H,W,3] in [0,1] -> f32[T-1,H-2,W-2,C]: the conv (VALID) on video mapped to [-1, 1],
    then ReLU."""
    return jax.nn.relu(ops.conv3d((2 * video - 1)[None], w, (1, 1, 1), "VALID")[0])


def conv_relu_readout(w, video, channel=None):
    """conv_relu, and with `channel` that channel alone, f32[T-1,H-2,W-2,1], computed alone
    (kvjax.stage1's one-channel readout); records each trace with a channel in READOUTS."""
    if channel is None:
        return conv_relu(w, video)
    READOUTS.append(channel)
    y = ops.conv3d_channel((2 * video - 1)[None], w, channel, (1, 1, 1), "VALID")
    return jax.nn.relu(y[0])


conv_relu_readout.channel_readout = True
READOUTS = []


def tiny_features(seed=0, readout=False):
    """The tiny model's features (with `readout`, taking `channel=` too)."""
    w = 0.3 * jax.random.normal(jax.random.key(seed), (2, 3, 3, 3, C))
    return jax.tree_util.Partial(conv_relu_readout if readout else conv_relu, w)


def config(**kw):
    """The paper preset shrunk to the tiny model: 12 steps, small jitter and scale."""
    base = dict(steps=12, size=SIZE, chunk_size=4, progress_every=5,
                transform=transforms.Affine(jitter=(1, 2, 2), scales=(0.9, 1.0, 1.1)))
    return stage1.Stage1Config.preset("paper", **{**base, **kw})
