"""pyorthrus: Orthrus parallel decoding for llama.cpp and GGUF."""
from .errors import PyorthrusError

__version__ = "0.1.0"
__all__ = ["PyorthrusError", "__version__"]
