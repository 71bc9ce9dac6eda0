"""pyorthrus: Orthrus parallel decoding for llama.cpp and GGUF."""
from .errors import PyorthrusError
from .strict import disable_tiled_matmul

# The batch-invariant CPU settings are the default (pyorthrus.strict); ggml-cpu reads its matmul choice once per
# process, so it is set here, before anything can load a model.
disable_tiled_matmul(keep_user_choice=True)

__version__ = "0.1.0"
__all__ = ["Orthrus", "PyorthrusError", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `python -m pyorthrus.build` must work before numpy and llama_cpp are installed.
    if name == "Orthrus":
        from .model import Orthrus

        return Orthrus
    raise AttributeError(f"module 'pyorthrus' has no attribute {name!r}")
