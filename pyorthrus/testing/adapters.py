"""Build Orthrus adapter GGUFs for tests and benchmarks with gguf-py (no PyTorch).

An "identity" adapter copies each layer's AR attention weights (the very quantized bytes) into the diff slots:
attn_q -> attn_q_diff, attn_k -> attn_k_diff, ... It is a valid adapter before any trained one exists (upstream
initialises the diff weights from the AR weights). The draft it gives is NOT the AR model (it is bidirectional over
MASK tokens), so drafts are often rejected: fine for losslessness tests.

`write_adapter(..., **faults)` also makes deliberately broken adapters for the validation tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import gguf
import numpy as np

from ..formats import (ADAPTER_TYPE_ORTHRUS, DIFF_TENSOR_OF, KEY_ADAPTER_BASE, KEY_ADAPTER_BLOCK_SIZE, KEY_ADAPTER_TYPE,
                       KEY_MASK_TOKEN_ID)
from ..gguf_meta import gguf_field, open_reader

# SmolLM2 has no mask token; <empty_output> (id 16) is a special token of its code-data vocabulary that chat text
# never produces, so it serves as MASK for identity adapters of SmolLM2.
SMOLLM2_MASK_TOKEN_ID = 16

_DIFF = DIFF_TENSOR_OF


def write_adapter(
    base: Path,
    out: Path,
    *,
    block_size: int = 32,
    mask_token_id: int = SMOLLM2_MASK_TOKEN_ID,
    arch: Optional[str] = None,
    n_layers: Optional[int] = None,
    embedding_length: Optional[int] = None,
    head_count: Optional[int] = None,
    head_count_kv: Optional[int] = None,
    vocab_size: Optional[int] = None,
    swap_qk_shapes: bool = False,
    truncate_bytes: int = 0,
    extra_tensor: bool = False,
    general_type: str = "adapter",
) -> Path:
    """Identity adapter of the GGUF `base`; the keyword arguments inject faults (None/False: correct value)."""
    reader = open_reader(base)
    base_arch = gguf_field(reader, "general.architecture")
    n_layer = int(gguf_field(reader, f"{base_arch}.block_count"))
    n_embd = int(gguf_field(reader, f"{base_arch}.embedding_length"))
    n_head = int(gguf_field(reader, f"{base_arch}.attention.head_count"))
    n_head_kv = int(gguf_field(reader, f"{base_arch}.attention.head_count_kv"))
    tok = reader.fields["tokenizer.ggml.tokens"]
    n_vocab = len(tok.data)

    w = gguf.GGUFWriter(str(out), arch=arch or base_arch)
    w.add_type(general_type)
    w.add_string(KEY_ADAPTER_TYPE, ADAPTER_TYPE_ORTHRUS)
    w.add_uint32(KEY_ADAPTER_BLOCK_SIZE, block_size)
    w.add_uint32(KEY_MASK_TOKEN_ID, mask_token_id)
    w.add_uint32(KEY_ADAPTER_BASE + "block_count", n_layer if n_layers is None else n_layers)
    w.add_uint32(KEY_ADAPTER_BASE + "embedding_length", n_embd if embedding_length is None else embedding_length)
    w.add_uint32(KEY_ADAPTER_BASE + "head_count", n_head if head_count is None else head_count)
    w.add_uint32(KEY_ADAPTER_BASE + "head_count_kv", n_head_kv if head_count_kv is None else head_count_kv)
    w.add_uint32(KEY_ADAPTER_BASE + "vocab_size", n_vocab if vocab_size is None else vocab_size)

    keep_layers = n_layer if n_layers is None else min(n_layer, n_layers)
    tensors = {t.name: t for t in reader.tensors}
    for il in range(keep_layers):
        for src, dst in _DIFF.items():
            for suffix in ("weight", "bias"):
                name = f"blk.{il}.{src}.{suffix}"
                if swap_qk_shapes and src in ("attn_q", "attn_k") and suffix == "weight":
                    name = f"blk.{il}.{'attn_k' if src == 'attn_q' else 'attn_q'}.weight"
                t = tensors.get(name)
                if t is None:
                    continue
                data = np.array(t.data)
                w.add_tensor(f"blk.{il}.{dst}.{suffix}", data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    if extra_tensor:
        w.add_tensor("blk.0.ffn_up_diff.weight", np.zeros((4, n_embd), dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if truncate_bytes:
        size = out.stat().st_size
        with open(out, "r+b") as f:
            f.truncate(max(0, size - truncate_bytes))
    return out


def write_identity_adapter(base: Path, out: Path, *, block_size: int = 32,
                           mask_token_id: int = SMOLLM2_MASK_TOKEN_ID) -> Path:
    return write_adapter(base, out, block_size=block_size, mask_token_id=mask_token_id)
