"""The batch-invariant ("strict") CPU configuration, in one place (DESIGN.md section 4).

Greedy Orthrus reproduces greedy AR only if a K-token verify pass gives the very logits that K one-token steps give;
otherwise the two part on near-ties. On the CPU three things break that, one per layer of the stack, and each is
switched off here:

  build    llamafile's sgemm kernels serve only batches of n >= 2            BUILD_CMAKE_ARGS (`pyorthrus build`)
  process  ggml-cpu's tiled K-quant matmul (GGML_CPU_TILED_MM, read once,    disable_tiled_matmul()
           at the process's first matmul of any weight type)
  model    weight repacking into "extra" buffer types, whose kernels         strict_model_loads() / use_extra_bufts
           depend on the batch shape

GPU kernels are not batch-invariant, so strict is the default only when every layer runs on the CPU. This module
imports nothing beyond the standard library: `import pyorthrus` uses it before llama_cpp may be installed.
"""
from __future__ import annotations

import contextlib
import os
import threading

BUILD_CMAKE_ARGS = ["-DGGML_LLAMAFILE=OFF"]
TILED_MATMUL_ENV = "GGML_CPU_TILED_MM"

_model_params_lock = threading.Lock()


def disable_tiled_matmul(*, keep_user_choice: bool = False) -> None:
    """Ask ggml-cpu for the untiled K-quant matmul. Takes effect only before the process's first matmul, so call it
    before loading any model; keep_user_choice leaves a GGML_CPU_TILED_MM the user exported (e.g. =1 to keep the
    tiled kernels for strict=False runs)."""
    if keep_user_choice:
        os.environ.setdefault(TILED_MATMUL_ENV, "0")
    else:
        os.environ[TILED_MATMUL_ENV] = "0"


@contextlib.contextmanager
def strict_model_loads():
    """While active, llama_cpp.Llama loads models without weight repacking (use_extra_bufts=False, which Llama does
    not expose: its call to llama_model_default_params is wrapped) and the tiled matmul is off (the fallback for a
    process that imported llama_cpp before pyorthrus)."""
    import llama_cpp.llama_cpp as lowlevel

    disable_tiled_matmul()
    with _model_params_lock:
        default = lowlevel.llama_model_default_params

        def strict_default():
            params = default()
            params.use_extra_bufts = False
            return params

        lowlevel.llama_model_default_params = strict_default
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = default
