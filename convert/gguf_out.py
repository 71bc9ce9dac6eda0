"""Writing adapter and merged GGUF files with gguf-py, streaming one tensor at a time, atomically.

All tensor infos are declared first (their byte sizes are known from shape and type), then header, metadata and
tensor infos are written, then each tensor's data is produced and written in turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
from tqdm import tqdm

from pyorthrus.errors import PyorthrusError
from pyorthrus.files import atomic_write
from pyorthrus.formats import QWEN35, hf_ar_name, permute_qk_rows
from pyorthrus.qwen35_layout import to_gguf
from pyorthrus.paths import check_writable

from .checkpoint import DiffTensor, OrthrusCheckpoint

OUTTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]          # numpy (row-major) order
    qtype: gguf.GGMLQuantizationType
    nbytes: int
    data: Callable[[], np.ndarray]  # produces the raw bytes/values when it is this tensor's turn


def tensor_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block_size * type_size


def diff_tensor_type(diff: DiffTensor, outtype: str) -> gguf.GGMLQuantizationType:
    """1-D tensors (norms, biases, ssm_a) and conv kernels stay F32 as llama.cpp's converter keeps them; Q8_0 needs
    rows of 32s."""
    qtype = OUTTYPES[outtype]
    shape = diff.shape
    if len(shape) == 1 or diff.gguf_name.endswith(".ssm_conv1d_diff.weight"):
        return gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return gguf.GGMLQuantizationType.F16
    return qtype


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_diff_tensor(ckpt: OrthrusCheckpoint, diff: DiffTensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Source tensor -> GGUF data: llama.cpp's layout (Llama Q/K row permutation; a qwen35 twin its AR tensor's
    transforms, pyorthrus.qwen35_layout), then the target type. BF16 -> BF16 copies the bits where the values are
    untouched; other casts round to nearest even (numpy, and gguf-py for f32 -> bf16), as torch does."""
    stored = ckpt.tensor(diff.hf.name)
    if diff.permute_heads:
        stored = permute_qk_rows(stored, diff.permute_heads)
    is_bf16, transformed = diff.hf.dtype == "BF16", ckpt.config.base == QWEN35
    value = bf16_bits_to_f32(stored) if is_bf16 else stored.astype(np.float32)
    if transformed:
        value = to_gguf(hf_ar_name(diff.hf.name), value, ckpt.hf_config)[1]
    if not np.isfinite(value).all():  # checked while streaming: a failure here must leave no output behind
        raise PyorthrusError(f"{diff.hf.shard}: tensor {diff.hf.name} contains NaN or infinite values"
                             + (" (in llama.cpp's layout)" if transformed else ""))
    if qtype == gguf.GGMLQuantizationType.BF16 and is_bf16 and not transformed:
        return np.ascontiguousarray(stored)
    if qtype == gguf.GGMLQuantizationType.F32:
        return value
    if qtype == gguf.GGMLQuantizationType.F16:
        return value.astype(np.float16)
    return gguf.quants.quantize(value, qtype)


def plan_diff_tensors(ckpt: OrthrusCheckpoint, outtype: str) -> list[PlannedTensor]:
    planned = []
    for diff in ckpt.diff_tensors:
        qtype = diff_tensor_type(diff, outtype)
        planned.append(PlannedTensor(diff.gguf_name, diff.shape, qtype, tensor_nbytes(diff.shape, qtype),
                                     lambda diff=diff, qtype=qtype: encode_diff_tensor(ckpt, diff, qtype)))
    return planned


def write_output(path: Path, force: bool, writer: Callable[[Path], object]) -> None:
    """Refuse an existing `path` (unless force) or an unwritable directory, then write it with atomic_write:
    writer(tmp) writes a temporary file beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    if path.exists() and not force:
        raise PyorthrusError(f"{path}: output exists (use --force to overwrite)")
    check_writable(path)
    atomic_write(path, writer)


def write_gguf(path: Path, arch: str, kv: list[tuple[str, object, gguf.GGUFValueType, object]],
               tensors: list[PlannedTensor], progress: bool, alignment: int | None = None,
               label: str | None = None) -> None:
    """Write a GGUF: `kv` as (key, value, type, array sub-type), then the planned tensors in order."""
    writer = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        writer.data_alignment = alignment
    for key, value, vtype, sub_type in kv:
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for t in tensors:
        # The dtype argument only matters for uint8 byte shapes; we always pass element shapes.
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(t.nbytes for t in tensors)
        with tqdm(total=total, unit="B", unit_scale=True, desc=label or path.name, disable=not progress,
                  leave=False) as bar:
            for t in tensors:
                data = t.data()
                if data.nbytes != t.nbytes:
                    raise PyorthrusError(f"{t.name}: produced {data.nbytes} bytes, expected {t.nbytes}")
                writer.write_tensor_data(data)
                bar.update(t.nbytes)
    finally:
        writer.close()


def uint32(key: str, value: int):
    return (key, int(value), gguf.GGUFValueType.UINT32, None)


def string(key: str, value: str):
    return (key, value, gguf.GGUFValueType.STRING, None)
