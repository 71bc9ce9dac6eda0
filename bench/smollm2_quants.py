"""SmolLM2-135M-Instruct in the weight types the bench scripts compare: the shipped Q4_1 file, or a copy
quantized from it with llama_model_quantize (kept in a work directory, written atomically so that concurrent
processes never see a partial file)."""
from __future__ import annotations

from pathlib import Path

import llama_cpp.llama_cpp as L

from pyorthrus import assets
from pyorthrus.files import atomic_write

FTYPES = {
    "F32": L.LLAMA_FTYPE_ALL_F32,
    "F16": L.LLAMA_FTYPE_MOSTLY_F16,
    "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_1": None,  # the shipped file
    "Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}


def model_file(quant: str, work: Path, threads: int) -> Path:
    if quant not in FTYPES:
        raise SystemExit(f"unknown weight type {quant!r}: choose from {', '.join(FTYPES)}")
    src = assets.smollm2_gguf()
    if FTYPES[quant] is None:
        return src
    dst = work / f"SmolLM2-135M-Instruct.{quant}.gguf"
    if not dst.is_file():
        work.mkdir(parents=True, exist_ok=True)
        qp = L.llama_model_quantize_default_params()
        qp.nthread = threads
        qp.ftype = FTYPES[quant]
        qp.allow_requantize = True

        def quantize(tmp: Path) -> None:
            rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), qp)
            if rc != 0:
                raise SystemExit(f"llama_model_quantize to {quant} failed ({rc})")

        atomic_write(dst, quantize)  # shards may quantize at once; one file wins
    return dst
