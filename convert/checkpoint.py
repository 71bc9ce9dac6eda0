"""Reading and validating an Orthrus HF checkpoint without loading it (numpy only, no torch).

Only the safetensors headers are read up front (and checked: offsets, sizes, file length); tensor data is then
memory-mapped one tensor at a time (`OrthrusCheckpoint.tensor`), so a converter never holds more than one tensor of
an 8B model in memory. numpy has no bfloat16: BF16 tensors come back as their raw uint16 bit patterns.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyorthrus.errors import PyorthrusError
from pyorthrus.formats import (CHECKPOINT_MODEL_TYPES, QWEN35, OrthrusConfig, config_from_hf, hf_ar_name,
                               qwen35_twin_names, twin_name)
from pyorthrus.qwen35_layout import gguf_name, gguf_shape, mixer_shapes

# HF suffix of each diff tensor -> GGUF tensor name (without "blk.N." and ".weight"/".bias").
DIFF_PROJECTIONS = {"q_proj_diff": "attn_q_diff", "k_proj_diff": "attn_k_diff", "v_proj_diff": "attn_v_diff",
                    "o_proj_diff": "attn_output_diff"}
DIFF_NORMS = {"q_norm_diff": "attn_q_norm_diff", "k_norm_diff": "attn_k_norm_diff"}
# safetensors dtype -> numpy dtype of the stored bits (BF16 as uint16 bit patterns).
FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shard: Path
    dtype: str         # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int        # of the tensor's data from the start of the file


@dataclass(frozen=True)
class DiffTensor:
    """One diff tensor to convert: where it lives and what it becomes."""

    hf: TensorEntry
    gguf_name: str
    layer: int
    permute_heads: int  # llama.cpp Q/K row permutation head count, 0 for none
    shape: tuple[int, ...]  # in the GGUF (numpy order): hf.shape but for a qwen35 conv kernel (gguf_shape)


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and where its data starts, checked against the file: every tensor's
    byte range matches its dtype and shape, ranges tile the data area without gaps or overlaps, none runs past the
    end (truncation)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise ValueError("header length past the end of the file")
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a mapping")
        tensors = {name: info for name, info in header.items() if name != "__metadata__"}
        expected_start = 0
        for name, info in sorted(tensors.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            n_bytes = int(np.prod(info["shape"], dtype=np.int64)) * ITEM_SIZES[info["dtype"]]
            if start != expected_start or end - start != n_bytes:
                raise ValueError(f"invalid data offsets for tensor {name}")
            expected_start = end
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PyorthrusError(f"{path}: corrupt safetensors file ({type(exc).__name__}: {exc})") from None
    data_start = 8 + header_len
    if data_start + expected_start > size:
        raise PyorthrusError(f"{path}: truncated safetensors file ({size} bytes, header describes "
                             f"{data_start + expected_start})")
    return header, data_start


class OrthrusCheckpoint:
    """An Orthrus checkpoint directory: config, tensor index across shards, validated diff-tensor set."""

    def __init__(self, ckpt_dir):
        self.dir = Path(ckpt_dir)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise PyorthrusError(f"{self.dir}: not an Orthrus checkpoint (no config.json)")
        try:
            self.hf_config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise PyorthrusError(f"{config_path}: invalid JSON ({exc})") from None
        if self.hf_config.get("model_type") not in CHECKPOINT_MODEL_TYPES:
            raise PyorthrusError(f"{config_path}: not an Orthrus checkpoint (model_type is "
                                 f"{self.hf_config.get('model_type')!r}, expected "
                                 + " or ".join(map(repr, CHECKPOINT_MODEL_TYPES)) + ")")
        for key in ("block_size", "mask_token_id"):
            if not isinstance(self.hf_config.get(key), int):
                raise PyorthrusError(f"{config_path}: not an Orthrus checkpoint (no integer {key})")
        self.config: OrthrusConfig = config_from_hf(self.hf_config, str(config_path))
        if not 0 <= self.config.mask_token_id < self.config.vocab_size:
            raise PyorthrusError(f"{config_path}: mask_token_id {self.config.mask_token_id} is outside the "
                                 f"vocabulary (vocab_size {self.config.vocab_size})")
        if self.config.block_size < 2:
            raise PyorthrusError(f"{config_path}: block_size {self.config.block_size} must be at least 2")
        self.entries = self._index()
        self.diff_only = all("_diff" in name for name in self.entries)
        self.diff_tensors = self._validate_twins() if self.config.base == QWEN35 else self._validate_diff_tensors()

    # -- index -------------------------------------------------------------------------------------------------

    def shard_paths(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise PyorthrusError(f"{index}: invalid safetensors index ({exc})") from None
            shards = [self.dir / name for name in dict.fromkeys(weight_map.values())]
            for shard in shards:
                if not shard.is_file():
                    raise PyorthrusError(f"{index}: shard {shard.name} does not exist")
            return shards
        single = self.dir / "model.safetensors"
        if not single.is_file():
            raise PyorthrusError(f"{self.dir}: no model.safetensors or model.safetensors.index.json")
        return [single]

    def _index(self) -> dict[str, TensorEntry]:
        entries: dict[str, TensorEntry] = {}
        for shard in self.shard_paths():
            header, data_start = read_safetensors_header(shard)
            for name, info in header.items():
                if name != "__metadata__":
                    entries[name] = TensorEntry(name, shard, info["dtype"], tuple(info["shape"]),
                                                data_start + info["data_offsets"][0])
        return entries

    def tensor(self, name: str) -> np.ndarray:
        """One float tensor, memory-mapped from its shard (nothing else is read); BF16 as uint16 bits."""
        entry = self.entries[name]
        return np.memmap(entry.shard, dtype=FLOAT_DTYPES[entry.dtype], mode="r", offset=entry.offset,
                         shape=entry.shape)

    # -- validation --------------------------------------------------------------------------------------------

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        cfg = self.config
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        shapes = {"q_proj_diff.weight": (q_out, cfg.hidden_size), "k_proj_diff.weight": (kv_out, cfg.hidden_size),
                  "v_proj_diff.weight": (kv_out, cfg.hidden_size), "o_proj_diff.weight": (cfg.hidden_size, q_out)}
        widths = {"q_proj": q_out, "k_proj": kv_out, "v_proj": kv_out, "o_proj": cfg.hidden_size}
        shapes.update({f"{proj}_diff.bias": (widths[proj],) for proj in cfg.biased_projections})
        if cfg.has_qk_norm:
            shapes.update({"q_norm_diff.weight": (cfg.head_dim,), "k_norm_diff.weight": (cfg.head_dim,)})
        return shapes

    def _validate_twins(self) -> list[DiffTensor]:
        """An Orthrus-Qwen3.5 checkpoint's twins: each attention layer's q/k/v/o projections and q/k norms, each
        Gated DeltaNet layer's modules and parameters, each with the shape the config gives its AR tensor (and,
        where the checkpoint holds the AR tensors as the reference saves them, that tensor's). A diff-only
        checkpoint (`pyorthrus train` on a Qwen3.5 GGUF) holds the twins alone."""
        cfg = self.config
        shapes = mixer_shapes(self.hf_config)
        expected = qwen35_twin_names(cfg)
        twins = []
        for name in expected:
            entry, ar_name = self.entries.get(name), hf_ar_name(name)
            if entry is None:
                raise PyorthrusError(f"{self.dir}: missing diff tensor {name} (layer {name.split('.')[2]})")
            if entry.dtype not in FLOAT_DTYPES:
                raise PyorthrusError(f"{entry.shard}: {name} has dtype {entry.dtype}, expected F32, F16 or BF16")
            ar = self.entries.get(ar_name)
            if ar is None and not self.diff_only:
                raise PyorthrusError(f"{self.dir}: {name} has no base tensor {ar_name}")
            want = shapes[ar_name.split(".", 3)[3]]
            for what, shape in (("config's", want), ("base tensor's", None if ar is None else ar.shape)):
                if shape is not None and entry.shape != shape:
                    raise PyorthrusError(f"{entry.shard}: {name} has shape {list(entry.shape)}, the {what} "
                                         f"{list(shape)}")
            twins.append(DiffTensor(entry, twin_name(gguf_name(ar_name)), int(name.split(".")[2]), 0,
                                    gguf_shape(ar_name, entry.shape)))
        unexpected = sorted({name for name in self.entries if "_diff" in name} - set(expected))
        if unexpected:
            raise PyorthrusError(f"{self.entries[unexpected[0]].shard}: unexpected diff tensor {unexpected[0]} "
                                 f"({len(unexpected)} unexpected in all; the config has {cfg.num_layers} layers, "
                                 f"{len(cfg.linear_layers)} of them Gated DeltaNet)")
        return twins

    def _validate_diff_tensors(self) -> list[DiffTensor]:
        cfg, where = self.config, str(self.dir)
        expected = self._expected_shapes()
        found = {name for name in self.entries if "_diff." in name}
        diff_tensors: list[DiffTensor] = []
        for layer in range(cfg.num_layers):
            prefix = f"model.layers.{layer}.self_attn."
            for suffix, shape in expected.items():
                name = prefix + suffix
                entry = self.entries.get(name)
                if entry is None:
                    raise PyorthrusError(f"{where}: missing diff tensor {name} (layer {layer})")
                found.discard(name)
                if entry.shape != shape:
                    raise PyorthrusError(f"{entry.shard}: {name} has shape {list(entry.shape)}, expected {list(shape)}")
                if entry.dtype not in FLOAT_DTYPES:
                    raise PyorthrusError(f"{entry.shard}: {name} has dtype {entry.dtype}, expected F32, F16 or BF16")
                ar = self.entries.get(name.replace("_diff.", "."))
                if ar is not None and (ar.shape != entry.shape or ar.dtype != entry.dtype):
                    raise PyorthrusError(f"{entry.shard}: {name} is {entry.dtype}{list(entry.shape)} but its base "
                                         f"tensor is {ar.dtype}{list(ar.shape)}")
                module, kind = suffix.rsplit(".", 1)
                gguf_base = DIFF_PROJECTIONS.get(module) or DIFF_NORMS[module]
                diff_tensors.append(DiffTensor(entry, f"blk.{layer}.{gguf_base}.{kind}", layer,
                                               _permute_heads(cfg, module), entry.shape))
        if found:
            name = sorted(found)[0]
            raise PyorthrusError(f"{self.entries[name].shard}: unexpected diff tensor {name} "
                                 f"({len(found)} unexpected in all; the config has {cfg.num_layers} layers)")
        return diff_tensors


def _permute_heads(cfg: OrthrusConfig, module: str) -> int:
    """llama.cpp permutes Llama Q/K rows (weights and biases) for its RoPE layout; other bases are not permuted."""
    if cfg.base != "llama":
        return 0
    return {"q_proj_diff": cfg.num_heads, "k_proj_diff": cfg.num_kv_heads}.get(module, 0)
