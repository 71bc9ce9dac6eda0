"""A base GGUF as the source of a merged file: validation against the checkpoint, metadata and tensors as they are."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from pyorthrus.errors import PyorthrusError
from pyorthrus.formats import GGUF_ARCH_TO_BASE, QWEN35, OrthrusConfig, qwen35_gguf_arch
from pyorthrus.gguf_meta import gguf_field

from .gguf_out import PlannedTensor

# Keys the merged file sets itself; the base's values (if any) are not copied.
_OWN_KEYS = ("general.architecture", "tokenizer.ggml.mask_token_id")


def validate_base(reader: gguf.GGUFReader, path: Path, cfg: OrthrusConfig, hf_config: dict) -> str:
    """Check the base GGUF matches the checkpoint; return its architecture name."""
    arch = gguf_field(reader, "general.architecture")
    want = qwen35_gguf_arch(hf_config) if cfg.base == QWEN35 else None
    if GGUF_ARCH_TO_BASE.get(arch) != cfg.base or want not in (None, arch):
        raise PyorthrusError(f"{path}: architecture {arch!r} does not match the checkpoint's base "
                             f"{want or cfg.base!r}")
    names = {t.name: t for t in reader.tensors}
    if any("_diff." in name for name in names):
        raise PyorthrusError(f"{path}: already contains Orthrus diff tensors; pass the plain base model")
    embd = names.get("token_embd.weight")
    heads = gguf_field(reader, f"{arch}.attention.head_count")
    checks = (("block_count", gguf_field(reader, f"{arch}.block_count"), cfg.num_layers),
              ("embedding_length", gguf_field(reader, f"{arch}.embedding_length"), cfg.hidden_size),
              ("head_count", heads, cfg.num_heads),
              ("head_count_kv", gguf_field(reader, f"{arch}.attention.head_count_kv") or heads, cfg.num_kv_heads),
              ("vocab size", None if embd is None else int(embd.shape[1]), cfg.vocab_size))
    for what, have, want in checks:
        if have != want:
            raise PyorthrusError(f"{path}: {what} is {have}, the checkpoint has {want}")
    return arch


def copied_metadata(reader: gguf.GGUFReader, rename_arch: tuple[str, str] | None = None) -> list[tuple]:
    """Every key/value of the base as (key, value, type, sub-type), strings kept as raw bytes so nothing is
    re-encoded. `rename_arch=(old, new)` moves `old.*` keys to `new.*` (Qwen3 -> the `orthrus` merged format)."""
    kv = []
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in _OWN_KEYS:
            continue
        main = f.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            if len(f.types) != 2:
                raise PyorthrusError(f"{key}: nested metadata arrays are not supported")
            sub = f.types[1]
            if sub == gguf.GGUFValueType.STRING:
                value = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [f.parts[i][0].item() for i in f.data]
            if not value:  # gguf-py cannot write an empty array; its reader yields none for llama.cpp either
                continue
        elif main == gguf.GGUFValueType.STRING:
            value, sub = bytes(f.parts[f.data[0]]), None
        else:
            value, sub = f.parts[f.data[0]][0].item(), None
        if rename_arch and key.startswith(rename_arch[0] + "."):
            key = rename_arch[1] + key[len(rename_arch[0]):]
        kv.append((key, value, main, sub))
    return kv


def base_alignment(reader: gguf.GGUFReader) -> int | None:
    return gguf_field(reader, "general.alignment")


def planned_base_tensors(reader: gguf.GGUFReader) -> list[PlannedTensor]:
    """The base tensors byte for byte: their raw data (memory-mapped) with their own type and shape."""
    planned = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        planned.append(PlannedTensor(t.name, shape, t.tensor_type, int(t.n_bytes),
                                     lambda t=t: np.asarray(t.data).view(np.uint8).reshape(-1)))
    return planned
