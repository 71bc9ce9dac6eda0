"""Which machine a benchmark ran on: the CPU's name and the accelerators ggml sees (what `pyorthrus bench` and its
`--shape` runs record as their device)."""
from __future__ import annotations

import ctypes
import platform
from pathlib import Path


def accelerators() -> list[str]:
    """Descriptions of the non-CPU devices ggml sees (e.g. the GPU's name); [] where ggml cannot be asked."""
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml.*"))  # libggml.so/.dylib, ggml.dll
    try:
        ggml = ctypes.CDLL(str(libs[0]))
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.restype, ggml.ggml_backend_dev_get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        ggml.ggml_backend_dev_type.restype, ggml.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
        ggml.ggml_backend_dev_description.restype = ctypes.c_char_p
        ggml.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    except (IndexError, OSError, AttributeError):
        return []
    devices = [ggml.ggml_backend_dev_get(i) for i in range(ggml.ggml_backend_dev_count())]
    return [ggml.ggml_backend_dev_description(d).decode() for d in devices if ggml.ggml_backend_dev_type(d) != 0]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
