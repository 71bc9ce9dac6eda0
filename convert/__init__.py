"""Orthrus HF checkpoint -> GGUF: an adapter file (diff tensors only) and/or a merged file (docs/design.md, "Files")."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gguf

from pyorthrus.errors import PyorthrusError
from pyorthrus.formats import (ADAPTER_TYPE_ORTHRUS, KEY_ADAPTER_BASE, KEY_ADAPTER_BLOCK_SIZE,
                               KEY_ADAPTER_RECURRENT_DRAFT, KEY_ADAPTER_TYPE, KEY_RECURRENT_DRAFT, RECURRENT_DRAFT,
                               KEY_BLOCK_SIZE, KEY_GENERAL_TYPE, KEY_MASK_TOKEN_ID, QWEN35, qwen35_gguf_arch)
from pyorthrus.gguf_meta import gguf_field, open_reader
from pyorthrus.paths import check_writable

from .base_gguf import base_alignment, copied_metadata, planned_base_tensors, validate_base
from .checkpoint import OrthrusCheckpoint
from .gguf_out import OUTTYPES, plan_diff_tensors, string, uint32, write_gguf, write_output
from .hf_base import convert_base_to_gguf

__all__ = ["convert_checkpoint", "OUTTYPES"]

# general.architecture of a merged file, per base GGUF architecture (Qwen3: the community `orthrus` format).
MERGED_ARCH = {"qwen3": "orthrus", "orthrus": "orthrus", "qwen2": "qwen2", "llama": "llama", "qwen35": "qwen35",
               "qwen35moe": "qwen35moe"}
# general.architecture of an adapter: the base model's own.
ADAPTER_ARCH = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}


def convert_checkpoint(ckpt_dir, adapter_out=None, merged_out=None, base=None, outtype: str = "f32",
                       force: bool = False, progress: bool = True) -> dict:
    """Convert an Orthrus checkpoint. Returns a summary: {"adapter": path|None, "merged": path|None, ...}."""
    if adapter_out is None and merged_out is None:
        raise PyorthrusError("nothing to do: give --adapter-out and/or --merged-out")
    if outtype not in OUTTYPES:
        raise PyorthrusError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    for out in (adapter_out, merged_out):  # fail before any work, not after a long conversion
        if out is not None and Path(out).exists() and not force:
            raise PyorthrusError(f"{out}: output exists (use --force to overwrite)")
        if out is not None:
            check_writable(out)
    ckpt = OrthrusCheckpoint(ckpt_dir)
    base_reader = None
    if base is not None:
        base_reader = open_reader(Path(base))
        validate_base(base_reader, Path(base), ckpt.config, ckpt.hf_config)
    elif merged_out is not None and ckpt.diff_only:
        raise PyorthrusError(f"{ckpt.dir}: diff-only checkpoint; a merged file needs --base BASE.gguf")
    summary = {"checkpoint": str(ckpt.dir), "base_model": ckpt.config.base, "diff_tensors": len(ckpt.diff_tensors),
               "layers": ckpt.config.num_layers, "outtype": outtype, "adapter": None, "merged": None}
    first_out = Path(merged_out if merged_out is not None else adapter_out)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{first_out.name}.", dir=first_out.parent))
    try:
        diff_tensors = plan_diff_tensors(ckpt, outtype)
        if adapter_out is not None:
            write_adapter(ckpt, diff_tensors, Path(adapter_out), force, progress)
            summary["adapter"] = str(adapter_out)
        if merged_out is not None:
            if base_reader is None:
                base_reader = open_reader(convert_base_to_gguf(ckpt, outtype, work_dir, progress=progress))
            write_merged(ckpt, base_reader, diff_tensors, Path(merged_out), force, progress)
            summary["merged"] = str(merged_out)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary


def adapter_kv(name: str, arch: str, block_size: int, mask_token_id: int, base: dict[str, int],
               recurrent_layers: list[bool] | None = None, recurrent_draft: str = RECURRENT_DRAFT) -> list[tuple]:
    """An Orthrus adapter file's keys, what llama_adapter_orthrus_init checks the diff tensors against: the block
    size, the mask token and `base`, the shape of the base it was trained for (block_count, embedding_length,
    head_count, head_count_kv, vocab_size); for a hybrid base its recurrent layers (for `inspect`) and the draft
    scheme of their twins (tests name another to see it refused)."""
    kv = [string(KEY_GENERAL_TYPE, "adapter"), string(KEY_ADAPTER_TYPE, ADAPTER_TYPE_ORTHRUS),
          string("general.name", name), uint32(KEY_ADAPTER_BLOCK_SIZE, block_size),
          uint32(KEY_MASK_TOKEN_ID, mask_token_id)]
    kv += [uint32(KEY_ADAPTER_BASE + key, base[key])
           for key in ("block_count", "embedding_length", "head_count", "head_count_kv", "vocab_size")]
    if recurrent_layers:
        kv += [(f"{arch}.attention.recurrent_layers", recurrent_layers, gguf.GGUFValueType.ARRAY,
                gguf.GGUFValueType.BOOL), string(KEY_ADAPTER_RECURRENT_DRAFT, recurrent_draft)]
    return kv


def write_adapter(ckpt: OrthrusCheckpoint, diff_tensors: list, out: Path, force: bool, progress: bool) -> None:
    """The (planned) diff tensors and what the loader checks them against (adapter_kv)."""
    cfg = ckpt.config
    base = {"block_count": cfg.num_layers, "embedding_length": cfg.hidden_size, "head_count": cfg.num_heads,
            "head_count_kv": cfg.num_kv_heads, "vocab_size": cfg.vocab_size}
    arch = qwen35_gguf_arch(ckpt.hf_config) if cfg.base == QWEN35 else ADAPTER_ARCH[cfg.base]
    kv = adapter_kv(f"Orthrus adapter ({ckpt.dir.name})", arch, ckpt.hf_config["block_size"],
                    ckpt.hf_config["mask_token_id"], base,
                    [i in cfg.linear_layers for i in range(cfg.num_layers)] if cfg.linear_layers else None)
    write_output(out, force, lambda tmp: write_gguf(tmp, arch, kv, diff_tensors, progress, label=out.name))


def write_merged(ckpt: OrthrusCheckpoint, base_reader, diff_tensors: list, out: Path, force: bool,
                 progress: bool) -> None:
    """Base GGUF metadata and tensors as they are, plus the (planned) diff tensors and the Orthrus keys."""
    base_arch = gguf_field(base_reader, "general.architecture")
    arch = MERGED_ARCH[base_arch]
    kv = copied_metadata(base_reader, rename_arch=(base_arch, arch) if arch != base_arch else None)
    block_size_key = KEY_BLOCK_SIZE.format(arch=arch)
    draft_key = KEY_RECURRENT_DRAFT.format(arch=arch)
    kv = [item for item in kv if item[0] not in (block_size_key, KEY_MASK_TOKEN_ID, draft_key)]
    kv += [uint32(block_size_key, ckpt.hf_config["block_size"]),
           uint32(KEY_MASK_TOKEN_ID, ckpt.hf_config["mask_token_id"])]
    if ckpt.config.linear_layers:
        kv.append(string(draft_key, RECURRENT_DRAFT))
    tensors = planned_base_tensors(base_reader) + diff_tensors
    write_output(out, force, lambda tmp: write_gguf(tmp, arch, kv, tensors, progress,
                                                    alignment=base_alignment(base_reader), label=out.name))
