"""kvjax: what the kernels of 3D (video) CNNs respond to, in JAX.

    model = kvjax.load_model("i3d")
    res = kvjax.visualize(model.features("Mixed_3b"), kernels=range(8), config=kvjax.Config())
"""
from kvjax.compiler import jit
from kvjax.config import Config
from kvjax.errors import KvjaxError
from kvjax.models import load_model
from kvjax.pipeline import Result, decompose, visualize

__version__ = "0.1.0"
__all__ = ["Config", "KvjaxError", "Result", "decompose", "jit", "load_model", "visualize"]
