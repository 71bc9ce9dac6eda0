"""The settings a test or benchmark process makes for itself, first thing, before llama_cpp is imported: libgomp
reads its environment when it is loaded, and ggml-cpu its matmul choice at the first matmul."""
from __future__ import annotations

import os
import sys

from ..strict import disable_tiled_matmul


def configure(strict: bool = True) -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set (ggml's OpenMP workers spin while waiting: on a shared 2-core machine that
    stalls every pass by up to seconds), and with strict the untiled K-quant matmul (pyorthrus.strict), so that
    every model of the process, loaded through pyorthrus or not, runs batch-invariant on the CPU."""
    if "llama_cpp" in sys.modules:
        raise RuntimeError("pyorthrus.testing.process.configure() must run before llama_cpp is imported")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if strict:
        disable_tiled_matmul()
