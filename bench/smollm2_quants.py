"""SmolLM2-135M-Instruct in the weight types the bench scripts compare: the shipped Q4_1 file, or a copy
quantized from it with llama_model_quantize (pyorthrus.bench.shapes.quantize_gguf: kept in a work directory,
written atomically so that concurrent processes never see a partial file)."""
from __future__ import annotations

from pathlib import Path

from pyorthrus import assets
from pyorthrus.bench.shapes import quantize_gguf
from pyorthrus.errors import PyorthrusError

SHIPPED = "Q4_1"  # the weight type of the embedded file


def model_file(quant: str, work: Path, threads: int | None = None) -> Path:
    """The SmolLM2 GGUF in weight type `quant` (F32, F16, Q8_0, Q4_1, Q4_K_M, ...: llama-quantize's names)."""
    src = assets.smollm2_gguf()
    if quant == SHIPPED:
        return src
    dst = work / f"SmolLM2-135M-Instruct.{quant}.gguf"
    if not dst.is_file():
        work.mkdir(parents=True, exist_ok=True)
        try:
            quantize_gguf(src, dst, quant, threads)  # shards may quantize at once; one file wins
        except PyorthrusError as exc:
            raise SystemExit(str(exc)) from None
    return dst
