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

GPU kernels are not batch-invariant, so strict is the default only when every layer runs on the CPU. Nothing here
acts at import: a strict load (pyorthrus.Orthrus) applies the process and model settings itself. This module imports
nothing beyond the standard library, so `pyorthrus build` can read BUILD_CMAKE_ARGS before llama_cpp is installed.
"""
from __future__ import annotations

import contextlib
import os
import platform
import warnings

BUILD_CMAKE_ARGS = ["-DGGML_LLAMAFILE=OFF"]
TILED_MATMUL_ENV = "GGML_CPU_TILED_MM"
# weight types ggml-cpu repacks into an extra buffer type (ggml-cpu/repack.cpp), and those whose repacked kernels
# give a K-token pass the very rows of K one-token steps (tests/test_model.py proves it on the machine it runs on).
# Q8_0 on x86 covers the tied Q8_0 output head of the embedded SmolLM2 Q4_1: repacked, its steps run ~20% faster.
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "Q2_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0"})
BATCH_INVARIANT_REPACKED_TYPES = frozenset({"Q8_0"} if platform.machine().lower() in ("x86_64", "amd64") else ())

# whether a non-strict load may have run while GGML_CPU_TILED_MM was not 0 (ggml-cpu then keeps the tiled matmul)
_tiled_matmul_may_be_chosen = False


def disable_tiled_matmul(*, keep_user_choice: bool = False) -> None:
    """Ask ggml-cpu for the untiled K-quant matmul. Takes effect only before the process's first matmul: a strict
    load calls it, and a process that runs a non-strict model before a strict one must call it (or export
    GGML_CPU_TILED_MM=0) before its first load. keep_user_choice leaves a GGML_CPU_TILED_MM the user exported."""
    if keep_user_choice:
        os.environ.setdefault(TILED_MATMUL_ENV, "0")
    else:
        os.environ[TILED_MATMUL_ENV] = "0"


def non_strict_load() -> None:
    """Call before a non-strict load, so that a later strict load in this process can tell that ggml-cpu may have
    chosen the tiled matmul for good at this load's first matmul."""
    global _tiled_matmul_may_be_chosen
    _tiled_matmul_may_be_chosen |= os.environ.get(TILED_MATMUL_ENV) != "0"


def repack_is_strict(tensor_types) -> bool:
    """Whether repacking the weights of these types (GGML type names) keeps every pass batch-invariant."""
    return not (set(tensor_types) & REPACKED_TYPES) - BATCH_INVARIANT_REPACKED_TYPES


@contextlib.contextmanager
def strict_model_loads(repack: bool = False):
    """While active on this thread, llama_cpp.Llama loads models without weight repacking (use_extra_bufts=False,
    through pyorthrus.llama_defaults) unless `repack` (repack_is_strict of the file's weight types); the tiled matmul
    is switched off first."""
    from .llama_defaults import overridden

    if _tiled_matmul_may_be_chosen:
        warnings.warn("a non-strict model ran earlier in this process, and ggml-cpu keeps the tiled K-quant matmul "
                      "it chose then: this strict model's K-quant passes may not be batch-invariant (call "
                      "pyorthrus.strict.disable_tiled_matmul() or export GGML_CPU_TILED_MM=0 before the first "
                      "load)", stacklevel=4)
    disable_tiled_matmul()
    with overridden(model={"use_extra_bufts": repack}):  # True is llama.cpp's default
        yield
