"""The batch-invariant ("strict") CPU configuration, in one place (docs/design.md, "Strict CPU configuration").

Greedy Orthrus reproduces greedy AR only if a K-token verify pass gives the very logits that K one-token steps give;
otherwise the two part on near-ties. On the CPU three things break that, one per layer of the stack, and each is
switched off here:

  build    llamafile's sgemm kernels serve only batches of n >= 2            BUILD_CMAKE_ARGS (`pyorthrus build`)
  process  ggml-cpu's tiled K-quant matmul (GGML_CPU_TILED_MM, read once,    disable_tiled_matmul()
           at the process's first matmul of any weight type)
  model    weight repacking into "extra" buffer types, whose kernels         strict_model_loads() / use_extra_bufts
           depend on the batch shape (Q4_K: a 4-token pass's rows differ     (kept where every repacked type is
           from 4 one-token steps), except Q8_0's on x86                    batch-invariant: repack_is_strict())

GPU kernels are not batch-invariant, so strict is the default only when every layer runs on the CPU. This module
imports nothing beyond the standard library: `import pyorthrus` uses it before llama_cpp may be installed.
"""
from __future__ import annotations

import contextlib
import os
import platform
import threading

BUILD_CMAKE_ARGS = ["-DGGML_LLAMAFILE=OFF"]
TILED_MATMUL_ENV = "GGML_CPU_TILED_MM"
# weight types ggml-cpu repacks into an extra buffer type (ggml-cpu/repack.cpp), and those whose repacked kernels
# give a K-token pass the very rows of K one-token steps (tests/test_model.py proves it on the machine it runs on).
# Q8_0 on x86 covers the tied Q8_0 output head of the embedded SmolLM2 Q4_1: repacked, its steps run ~20% faster.
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "Q2_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})
BATCH_INVARIANT_REPACKED_TYPES = frozenset({"Q8_0"} if platform.machine().lower() in ("x86_64", "amd64") else ())

_model_params_lock = threading.Lock()


def disable_tiled_matmul(*, keep_user_choice: bool = False) -> None:
    """Ask ggml-cpu for the untiled K-quant matmul. Takes effect only before the process's first matmul, so call it
    before loading any model; keep_user_choice leaves a GGML_CPU_TILED_MM the user exported (e.g. =1 to keep the
    tiled kernels for strict=False runs)."""
    if keep_user_choice:
        os.environ.setdefault(TILED_MATMUL_ENV, "0")
    else:
        os.environ[TILED_MATMUL_ENV] = "0"


def repack_is_strict(tensor_types) -> bool:
    """Whether repacking the weights of these types (GGML type names) keeps every pass batch-invariant."""
    return not (set(tensor_types) & REPACKED_TYPES) - BATCH_INVARIANT_REPACKED_TYPES


@contextlib.contextmanager
def strict_model_loads(repack: bool = False):
    """While active, llama_cpp.Llama loads models without weight repacking (use_extra_bufts=False, which Llama does
    not expose: its call to llama_model_default_params is wrapped) unless `repack` (repack_is_strict of the file's
    weight types), and the tiled matmul is off (the fallback for a process that imported llama_cpp before
    pyorthrus)."""
    import llama_cpp.llama_cpp as lowlevel

    disable_tiled_matmul()
    if repack:
        yield
        return
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
