"""pyorthrus: Orthrus parallel decoding for llama.cpp and GGUF."""
import os

from .errors import PyorthrusError

# The batch-invariant CPU settings are the default (strict): ggml-cpu reads GGML_CPU_TILED_MM once per process, at
# its first matrix product of any weight type, so it is set here, before anything can load a model. Export
# GGML_CPU_TILED_MM=1 to keep the tiled K-quant kernels for strict=False runs.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

__version__ = "0.1.0"
__all__ = ["Orthrus", "PyorthrusError", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `python -m pyorthrus.build` must work before numpy and llama_cpp are installed.
    if name == "Orthrus":
        from .model import Orthrus

        return Orthrus
    raise AttributeError(f"module 'pyorthrus' has no attribute {name!r}")
