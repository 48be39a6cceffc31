"""kvjax: what the kernels of 3D (video) CNNs respond to, in JAX."""
from kvjax.errors import KvjaxError
from kvjax.models import load_model

__version__ = "0.1.0"
__all__ = ["load_model", "KvjaxError"]
