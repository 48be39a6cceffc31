"""`features(video, channel=k)` on every built-in architecture (random weights): the layer's
channel k, computed alone where the model can (convolution layers, residual blocks with
either shortcut, pools), sliced from the whole layer elsewhere; values and stage 1's vmapped
input gradients equal the whole layer's.
(I3D's layers, Inception blocks included, are checked on the pretrained weights in
test_i3d.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kvjax.models import c3d, flownets, pytorch_i3d, slowfast_i3d, video_resnet, videogpt
from kvjax.models.base import Taps, VideoModel, run_until

SIZE = (8, 24, 24)  # what the features functions feed the networks (up to the layer)
# (name, net builder, the model's own input size, layers): the layers each model computes as
# one channel, then one it slices from the whole layer.
CASES = [
    ("c3d", lambda: c3d.make_net(), c3d.INPUT_SIZE, ["conv1", "conv2/conv"], ["pool1"]),
    # block outputs with a downsampling shortcut (layer2/0, s2/res0) and an identity one as
    # a stage's output (layer1 = layer1/1's, s2/pool = the pool of s2/res2's)
    ("r3d_18", lambda: video_resnet.make_net("r3d_18"), video_resnet.INPUT_SIZE,
     ["stem", "layer1/0/conv1", "layer1", "layer2/0"], []),
    # mc3_18's 1x3x3 layers: a 1x2x2-strided conv and shortcut (stride 1 in time)
    ("mc3_18", lambda: video_resnet.make_net("mc3_18"), video_resnet.INPUT_SIZE,
     ["layer2/0/conv1", "layer2/0"], []),
    ("r2plus1d_18", lambda: video_resnet.make_net("r2plus1d_18"), video_resnet.INPUT_SIZE,
     ["stem/mid", "layer1/0/conv1/spatial", "layer2/0"], []),
    ("slowfast-i3d-r50", lambda: slowfast_i3d.make_net(), slowfast_i3d.INPUT_SIZE,
     ["s1", "s2/res0/a", "s2/res0/b/conv", "s2/res0", "s2/pool"], []),
    ("videogpt-vqvae", lambda: videogpt.make_net(n_hiddens=32, n_res_layers=1), None,
     ["convs/0/conv", "conv_last", "res0/conv3", "res0/conv1/conv", "pre_vq_conv"], ["res0"]),
    ("flownets", lambda: flownets.make_net(), (2, 64, 64), ["conv1/conv", "conv2"], []),
    ("flownets-bn", lambda: flownets.make_net(batch_norm=True), (2, 64, 64), ["conv1"], []),
    ("pytorch-i3d", lambda: pytorch_i3d.make_net(), pytorch_i3d.INPUT_SIZE,
     ["Conv3d_1a_7x7"], []),
]


def _randomise_per_channel(net) -> None:
    """Every per-channel vector (BatchNorm statistics and scales, biases) random, in place: at
    init they are the same in every channel, so a readout picking the wrong one would pass."""
    rng = np.random.default_rng(1)
    for path, var in nnx.to_flat_state(nnx.state(net)):
        if var[...].ndim == 1:
            low = 0.5 if path[-1] in ("var", "scale") else -0.5
            var[...] = jnp.asarray(rng.uniform(low, 1.5, var[...].shape), jnp.float32)


def _computes_one_channel(net, layer) -> bool:
    """Whether the network computes `layer` as one channel alone when asked (the model's
    path, not run_until's slice of the whole layer)."""
    taps = Taps(layer, jnp.int32(1))
    graphdef, state = nnx.split(net)
    try:
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, taps), state,
                       jax.ShapeDtypeStruct((1, *SIZE, 3), jnp.float32))
    except Exception:  # noqa: BLE001 - the stop at `layer` (base._Reached)
        pass
    return taps.sliced


# The longest cases (20-50 s each, mostly compilation) run with `-m slow`: the default suite
# keeps r3d_18 (both shortcuts), FlowNetS (bias, BatchNorm) and, in test_i3d.py, I3D.
SLOW = {"c3d", "mc3_18", "r2plus1d_18", "slowfast-i3d-r50", "videogpt-vqvae", "pytorch-i3d"}


@pytest.mark.parametrize("name, make, input_size, alone, sliced",
                         [pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW
                                       else []) for c in CASES])
def test_one_channel_equals_the_layers_channel(name, make, input_size, alone, sliced):
    net = make()
    _randomise_per_channel(net)
    model = VideoModel(name, net, input_size or net.input_size, (-1.0, 1.0))
    video = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (*SIZE, 3)), jnp.float32)
    assert [_computes_one_channel(net, l) for l in alone + sliced] == \
        [True] * len(alone) + [False] * len(sliced)
    for layer in alone + sliced:
        f = model.features(layer, input_size=SIZE)
        full = jax.jit(f)(video)
        c = full.shape[-1]
        ks = jnp.asarray([0, c // 2, c - 1])
        one = jax.jit(jax.vmap(lambda k: f(video, channel=k)))(ks)
        want = jnp.moveaxis(full[..., ks], -1, 0)[..., None]
        scale = float(jnp.abs(want).max()) + 1e-6
        np.testing.assert_allclose(one, want, rtol=0, atol=1e-4 * scale, err_msg=layer)
        objective = lambda a: jnp.mean(a) + jnp.mean(a ** 2)  # noqa: E731
        g_one = jax.jit(jax.vmap(jax.grad(lambda v, k: objective(f(v, channel=k))),
                                 (None, 0)))(video, ks)
        g_full = jax.jit(jax.vmap(jax.grad(lambda v, k: objective(f(v)[..., k])),
                                  (None, 0)))(video, ks)
        scale = float(jnp.abs(g_full).max()) + 1e-12
        np.testing.assert_allclose(g_one, g_full, rtol=0, atol=1e-4 * scale,
                                   err_msg=f"{layer} gradient")
    if alone:  # a concrete channel, negative, straight to the network (no features() to
        # normalise it): counted from the end everywhere (convolution, BatchNorm, bias)
        graphdef, state = nnx.split(net)
        run = jax.jit(lambda s, x, c: run_until(nnx.merge(graphdef, s), x, alone[-1], c),
                      static_argnums=2)
        x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, *SIZE, 3)), jnp.float32)
        want = run(state, x, None)[..., -1:]
        np.testing.assert_allclose(run(state, x, -1), want, rtol=0,
                                   atol=1e-4 * (float(jnp.abs(want).max()) + 1e-6))


def test_videogpt_post_activation_layers_are_non_negative_and_residual_sums_are_pre():
    """POST means a ReLU came last: every such VideoGPT layer is >= 0 on a random video; a
    residual block's output x + y has no nonlinearity and is read as PRE."""
    net = videogpt.make_net(n_hiddens=32, n_res_layers=1)
    _randomise_per_channel(net)
    model = VideoModel("videogpt-vqvae", net, net.input_size, (-0.5, 0.5))
    reads = {l.name: l.read for l in model.layers(SIZE)}
    assert reads["res0"] == "pre-activation" and reads["res_stack"] == "post-activation"
    video = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (*SIZE, 3)), jnp.float32)
    for name, read in reads.items():
        if read == "post-activation":
            assert float(jnp.min(model.features(name, input_size=SIZE)(video))) >= 0.0, name


def test_flownets_with_one_frame_reaches_no_layer():
    """FlowNetS reads frame pairs: one frame gives no pair, a clear error (was a
    ZeroDivisionError traceback)."""
    from kvjax.errors import KvjaxError
    from kvjax.models import flownets
    net = nnx.eval_shape(flownets.make_net)  # shapes only: no 38M weights to draw
    model = VideoModel("flownets", net, flownets.INPUT_SIZE, (0.0, 1.0))
    assert model.layers((1, 64, 64)) == []
    with pytest.raises(KvjaxError, match="out of reach of a model input of 1x64x64.*no layer"):
        model.check_layer("conv1", (1, 64, 64))


def test_flownets_deconvolution_one_channel_equals_the_whole_layers():
    """FlowNetS's deconvolutions (deconv5 ... deconv2, whose layers sit behind conv6_1, too
    deep for the network test above) compute one output channel alone: values and input
    gradients equal the whole layer's channel."""
    deconv = flownets.ConvTranspose2d(6, 5, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 2, 5, 7, 6)), jnp.float32)
    full = deconv(x)
    assert full.shape == (1, 2, 10, 14, 5)
    ks = jnp.asarray([0, 2, 4])  # vmapped and traced, as stage 1 reads them (diagonal form)
    one = jax.jit(jax.vmap(lambda k: deconv(x, k)))(ks)
    np.testing.assert_allclose(one, jnp.moveaxis(full[..., ks], -1, 0)[..., None], atol=1e-5)
    g_one = jax.jit(jax.vmap(jax.grad(lambda x, k: jnp.sum(deconv(x, k) ** 2)), (None, 0)))(x, ks)
    g_full = jax.jit(jax.vmap(jax.grad(lambda x, k: jnp.sum(deconv(x)[..., k] ** 2)),
                              (None, 0)))(x, ks)
    np.testing.assert_allclose(g_one, g_full, atol=1e-4)
