"""pyorthrus: Orthrus parallel decoding for llama.cpp and GGUF."""
from .errors import PyorthrusError

__version__ = "0.1.0"
__all__ = ["Orthrus", "PyorthrusError", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `python -m pyorthrus.build` must work before numpy and llama_cpp are installed.
    if name == "Orthrus":
        from .model import Orthrus

        return Orthrus
    raise AttributeError(f"module 'pyorthrus' has no attribute {name!r}")
