"""The models' input resize equals PyTorch's trilinear interpolate with align_corners=True
(the reference code's model input), up- and down-sampling, and is the identity at equal size."""
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.models.base import resize_video

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("size", [(32, 224, 224), (16, 112, 112), (5, 64, 200), (16, 128, 128)])
def test_resize_matches_torch_align_corners(size):
    v = np.random.default_rng(0).uniform(0, 1, (16, 128, 128, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(v.transpose(3, 0, 1, 2))[None], size=size, mode="trilinear",
        align_corners=True)[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(np.asarray(resize_video(jnp.asarray(v), size)), ref, atol=1e-6)
