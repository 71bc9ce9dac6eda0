"""Reading GGUF metadata without loading anything into llama.cpp (numpy and gguf-py only): what a file is (model /
Orthrus adapter / merged Orthrus model), how complete its diff tensors are, which of them are stored below Q8_0, and
whether an adapter fits a base, check by check, as llama_adapter_orthrus_init decides it.

Part of the runtime (pyorthrus.model warns about low-precision diff weights, pyorthrus.reference refuses an adapter
that does not fit): the `inspect` verb (pyorthrus.inspect) prints what this module reads.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path

from .errors import PyorthrusError
from .formats import (ADAPTER_TYPE_ORTHRUS, DIFF_TENSORS, FULL_ATTENTION_INTERVAL, KEY_ADAPTER_BASE,
                      KEY_ADAPTER_BLOCK_SIZE, KEY_ADAPTER_RECURRENT_DRAFT, KEY_ADAPTER_TYPE, KEY_BLOCK_SIZE,
                      KEY_GENERAL_TYPE, KEY_MASK_TOKEN_ID, KEY_RECURRENT_DRAFT, RECURRENT_DIFF_TENSORS)

NO_QK_NORM_ARCHS = ("llama", "qwen2")
# the base architectures the patched llama.cpp attaches adapter files to
ADAPTER_ARCHS = ("llama", "qwen2", "qwen3", "qwen35", "qwen35moe")
# diff tensor types that keep the drafts' acceptance: public reports say 4-bit diff weights collapse it to ~1 token
# per forward pass
SAFE_DIFF_TYPES = ("F32", "F16", "BF16", "Q8_0")
STATE_BYTES = 4  # llama.cpp keeps recurrent states in F32
_DIFF_NAME = re.compile(r"^blk\.(\d+)\.((?:attn|ssm)_\w+_diff)(?:\.(weight|bias))?$")


def gguf_field(reader, key: str, default=None):
    """The value of metadata field `key` of an open gguf.GGUFReader, or `default` when the file has no such key."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def open_reader(path):
    """gguf.GGUFReader of a file (an open reader is returned as it is), or a one-line PyorthrusError naming it.
    Parsing a Qwen-sized vocabulary takes seconds even so: open a file once and pass the reader on."""
    import gguf

    if isinstance(path, gguf.GGUFReader):
        return path
    path = Path(path)
    if not path.is_file():
        raise PyorthrusError(f"{path}: no such file")
    try:
        return _plain_array_reader()(str(path))
    except Exception as exc:  # gguf-py raises assorted errors on damaged files
        raise PyorthrusError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc})") from None


@functools.cache
def _plain_array_reader():
    import gguf
    import numpy as np

    class PlainArrayReader(gguf.GGUFReader):
        """gguf.GGUFReader that slices the file as a plain ndarray while it parses: each of the ~600k small reads
        of a Qwen-sized vocabulary then skips np.memmap's per-slice bookkeeping (3x faster, same fields; a test
        compares both readers on the real SmolLM2 file)."""

        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainArrayReader


def readable_gguf(path):
    """An open reader of a model file, or its path where gguf-py cannot read it (llama.cpp's load then says why): what
    weight_types and state_snapshots_needed take, so that one load parses the file once."""
    try:
        return open_reader(path)
    except PyorthrusError:
        return path


def weight_types(path) -> set[str]:
    """The GGML type names of a file's tensors (a path or open reader; empty if gguf-py cannot read it: llama.cpp's
    load then says why)."""
    try:
        return {t.tensor_type.name for t in open_reader(path).tensors}
    except PyorthrusError:
        return set()


def inspect_gguf(path) -> dict:
    """A JSON-ready description of a GGUF file."""
    path = Path(path)
    reader = open_reader(path)
    arch = gguf_field(reader, "general.architecture")
    is_adapter = gguf_field(reader, KEY_GENERAL_TYPE) == "adapter"
    if is_adapter and gguf_field(reader, KEY_ADAPTER_TYPE) != ADAPTER_TYPE_ORTHRUS:
        kind = f"adapter ({gguf_field(reader, KEY_ADAPTER_TYPE)})"
    elif is_adapter:
        kind = "adapter"
    else:
        kind = "merged" if any(_DIFF_NAME.match(t.name) for t in reader.tensors) else "model"
    block_count = gguf_field(reader, KEY_ADAPTER_BASE + "block_count" if is_adapter else f"{arch}.block_count")
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "architecture": arch,
        "type": kind,
        "name": gguf_field(reader, "general.name"),
        "block_count": block_count,
        "block_size": gguf_field(reader, KEY_BLOCK_SIZE.format(arch=arch)) or gguf_field(reader, KEY_ADAPTER_BLOCK_SIZE),
        "mask_token_id": gguf_field(reader, KEY_MASK_TOKEN_ID),
        "recurrent_draft": gguf_field(reader, KEY_RECURRENT_DRAFT.format(arch=arch))
        or gguf_field(reader, KEY_ADAPTER_RECURRENT_DRAFT),
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        "diff_coverage": diff_coverage(reader, arch, block_count),
        "low_precision_diff_tensors": low_precision_diff_tensors(reader),
        "base": {key.removeprefix(KEY_ADAPTER_BASE): gguf_field(reader, key)
                 for key in reader.fields if key.startswith(KEY_ADAPTER_BASE)} or None,
        "recurrent": None if is_adapter else recurrent_state(reader, arch, block_count),
    }


def recurrent_layers(reader, arch: str, block_count: int | None) -> list[int]:
    """The recurrent layers of a hybrid model, as llama.cpp decides them: `{arch}.attention.recurrent_layers`, else
    every layer but each `full_attention_interval`-th (its default per arch). Empty for other models."""
    if arch not in FULL_ATTENTION_INTERVAL or not isinstance(block_count, int):
        return []
    flags = gguf_field(reader, f"{arch}.attention.recurrent_layers")
    if flags:
        return [i for i, flag in enumerate(flags[:block_count]) if flag]
    interval = gguf_field(reader, f"{arch}.full_attention_interval") or FULL_ATTENTION_INTERVAL[arch]
    return [i for i in range(block_count) if (i + 1) % interval != 0]


def state_snapshots_needed(path, adapter=None) -> int:
    """The state snapshots (llama.cpp's n_rs_seq) an Orthrus context on this model file (a path or open reader)
    needs: for a model with recurrent layers the trained block size K of its own diff tensors or of `adapter` (a
    cycle takes up to K tokens back from them), else 0 (also when gguf-py cannot read a file: llama.cpp's load then
    says why)."""
    try:
        reader = open_reader(path)
        adapter_reader = open_reader(adapter) if adapter is not None else None
    except PyorthrusError:
        return 0
    arch = gguf_field(reader, "general.architecture")
    if recurrent_state(reader, arch, gguf_field(reader, f"{arch}.block_count")) is None:
        return 0
    if adapter_reader is not None:
        return gguf_field(adapter_reader, KEY_ADAPTER_BLOCK_SIZE) or 0
    return gguf_field(reader, KEY_BLOCK_SIZE.format(arch=arch)) or 0


def recurrent_state(reader, arch: str, block_count: int | None) -> dict | None:
    """For a hybrid model (Qwen3.5's Gated DeltaNet layers among attention layers): how many layers are recurrent
    and the state llama.cpp keeps for them per sequence (the conv window and the recurrent state, as
    llama_hparams::n_embd_r / n_embd_s count them, in F32). Every rollback snapshot (llama.cpp's n_rs_seq) holds
    that much again, and a cycle that takes back a block of K tokens needs K of them. None for other models."""
    layers = recurrent_layers(reader, arch, block_count)
    if not layers:
        return None
    key = lambda name: gguf_field(reader, f"{arch}.{name}")  # noqa: E731
    recurrent = len(layers)
    d_conv, d_inner, d_state = key("ssm.conv_kernel"), key("ssm.inner_size"), key("ssm.state_size")
    if not all(isinstance(v, int) for v in (d_conv, d_inner, d_state)):
        return None
    per_layer = (d_conv - 1) * (d_inner + 2 * (key("ssm.group_count") or 0) * d_state) + d_state * d_inner
    return {"recurrent_layers": recurrent, "attention_layers": block_count - recurrent,
            "state_bytes_per_sequence": recurrent * per_layer * STATE_BYTES}


def diff_coverage(reader, arch: str, block_count: int | None) -> dict:
    """Which diff tensors each layer has: counts, complete layers, and the gaps (layer -> missing names). A hybrid
    model's recurrent layers are expected to carry their twin (RECURRENT_DIFF_TENSORS) instead."""
    per_layer: dict[int, set[str]] = {}
    for t in reader.tensors:
        match = _DIFF_NAME.match(t.name)
        if match and (match.group(3) != "bias" or match.group(2) == "ssm_dt_diff"):
            per_layer.setdefault(int(match.group(1)), set()).add(match.group(2))
    expected = [n for n in DIFF_TENSORS if not (arch in NO_QK_NORM_ARCHS and "norm" in n)]
    layers = range(block_count) if isinstance(block_count, int) else sorted(per_layer)
    recurrent = set(recurrent_layers(reader, arch, block_count))
    missing = {layer: [n for n in (RECURRENT_DIFF_TENSORS if layer in recurrent else expected)
                       if n not in per_layer.get(layer, set())] for layer in layers}
    missing = {layer: names for layer, names in missing.items() if names and per_layer}
    return {
        "diff_tensors": sum(len(v) for v in per_layer.values()),
        "expected_per_layer": expected,
        "expected_per_recurrent_layer": list(RECURRENT_DIFF_TENSORS) if recurrent else None,
        "layers_with_diff": len(per_layer),
        "complete_layers": sum(1 for layer in layers if per_layer and layer not in missing),
        "missing": {str(layer): names for layer, names in missing.items()},
    }


def low_precision_diff_tensors(reader) -> dict[str, int]:
    """Type -> count of the diff weight matrices stored below Q8_0 (where drafts lose their acceptance)."""
    return dict(Counter(t.tensor_type.name for t in reader.tensors if _DIFF_NAME.match(t.name)
                        and len(t.shape) > 1 and t.tensor_type.name not in SAFE_DIFF_TYPES))


def _vocab_size(reader, arch: str) -> int | None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return gguf_field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None)


def adapter_fit(base, adapter) -> dict:
    """Whether an Orthrus adapter GGUF fits a base GGUF (paths or open readers): one entry per check, with both
    values; `fits` is true when every check passes. The checks are the ones llama_adapter_orthrus_init makes."""
    base_reader = base if not isinstance(base, (str, Path)) else open_reader(base)
    adapter_reader = adapter if not isinstance(adapter, (str, Path)) else open_reader(adapter)
    arch = gguf_field(base_reader, "general.architecture")
    vocab = _vocab_size(base_reader, arch)
    mask = gguf_field(adapter_reader, KEY_MASK_TOKEN_ID)
    checks = [("file type", "model" if gguf_field(base_reader, KEY_GENERAL_TYPE) != "adapter" else "adapter",
               f"{gguf_field(adapter_reader, KEY_GENERAL_TYPE)}/{gguf_field(adapter_reader, KEY_ADAPTER_TYPE)}",
               gguf_field(base_reader, KEY_GENERAL_TYPE) != "adapter"
               and (gguf_field(adapter_reader, KEY_GENERAL_TYPE), gguf_field(adapter_reader, KEY_ADAPTER_TYPE))
               == ("adapter", ADAPTER_TYPE_ORTHRUS)),
              ("architecture", arch, gguf_field(adapter_reader, "general.architecture"),
               arch == gguf_field(adapter_reader, "general.architecture") and arch in ADAPTER_ARCHS)]
    for label, key, base_key in (("layers", "block_count", "block_count"),
                                 ("width", "embedding_length", "embedding_length"),
                                 ("attention heads", "head_count", "attention.head_count"),
                                 ("KV heads", "head_count_kv", "attention.head_count_kv")):
        want, got = gguf_field(base_reader, f"{arch}.{base_key}"), gguf_field(adapter_reader, KEY_ADAPTER_BASE + key)
        checks.append((label, want, got, want == got))
    got = gguf_field(adapter_reader, KEY_ADAPTER_BASE + "vocab_size")
    checks.append(("vocabulary", vocab, got, vocab == got))
    checks.append(("mask token", f"< {vocab}", mask, isinstance(mask, int) and vocab is not None and 0 <= mask < vocab))
    entries = [{"check": label, "base": want, "adapter": got, "ok": bool(ok)} for label, want, got, ok in checks]
    return {"base": str(base_reader.data.filename), "adapter": str(adapter_reader.data.filename),
            "fits": all(e["ok"] for e in entries), "checks": entries}


def fit_error(fit: dict) -> str | None:
    """The first failing check of adapter_fit as one line naming both files, or None when the adapter fits."""
    bad = next((e for e in fit["checks"] if not e["ok"]), None)
    if bad is None:
        return None
    return (f"{fit['adapter']} does not fit {fit['base']}: {bad['check']} is {bad['adapter']} in the adapter, "
            f"{bad['base']} in the base")
