"""`pyorthrus inspect FILE.gguf`: what a GGUF is (model / Orthrus adapter / merged Orthrus model) and how complete."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from .errors import PyorthrusError

DIFF_TENSORS = ("attn_q_diff", "attn_k_diff", "attn_v_diff", "attn_output_diff", "attn_q_norm_diff",
                "attn_k_norm_diff")
NO_QK_NORM_ARCHS = ("llama",)
_DIFF_NAME = re.compile(r"^blk\.(\d+)\.(attn_\w+_diff)\.(weight|bias)$")


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def inspect_gguf(path) -> dict:
    """A JSON-ready description of a GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise PyorthrusError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf-py raises assorted errors on damaged files
        raise PyorthrusError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc})") from None
    arch = _field(reader, "general.architecture")
    is_adapter = _field(reader, "general.type") == "adapter"
    if is_adapter and _field(reader, "adapter.type") != "orthrus":
        kind = f"adapter ({_field(reader, 'adapter.type')})"
    elif is_adapter:
        kind = "adapter"
    else:
        kind = "merged" if any(_DIFF_NAME.match(t.name) for t in reader.tensors) else "model"
    block_count = _field(reader, "orthrus.base.block_count" if is_adapter else f"{arch}.block_count")
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "architecture": arch,
        "type": kind,
        "name": _field(reader, "general.name"),
        "block_count": block_count,
        "block_size": _field(reader, f"{arch}.diffusion.block_size") or _field(reader, "orthrus.diffusion.block_size"),
        "mask_token_id": _field(reader, "tokenizer.ggml.mask_token_id"),
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        "diff_coverage": diff_coverage(reader, arch, block_count),
        "base": {key.removeprefix("orthrus.base."): _field(reader, key)
                 for key in reader.fields if key.startswith("orthrus.base.")} or None,
    }


def diff_coverage(reader, arch: str, block_count: int | None) -> dict:
    """Which diff tensors each layer has: counts, complete layers, and the gaps (layer -> missing names)."""
    per_layer: dict[int, set[str]] = {}
    for t in reader.tensors:
        match = _DIFF_NAME.match(t.name)
        if match and match.group(3) == "weight":
            per_layer.setdefault(int(match.group(1)), set()).add(match.group(2))
    expected = [n for n in DIFF_TENSORS if not (arch in NO_QK_NORM_ARCHS and "norm" in n)]
    layers = range(block_count) if isinstance(block_count, int) else sorted(per_layer)
    missing = {layer: [n for n in expected if n not in per_layer.get(layer, set())] for layer in layers}
    missing = {layer: names for layer, names in missing.items() if names and per_layer}
    return {
        "diff_tensors": sum(len(v) for v in per_layer.values()),
        "expected_per_layer": expected,
        "layers_with_diff": len(per_layer),
        "complete_layers": sum(1 for layer in layers if per_layer and layer not in missing),
        "missing": {str(layer): names for layer, names in missing.items()},
    }


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_report(info: dict) -> str:
    cov = info["diff_coverage"]
    lines = [
        f"file:          {info['path']} ({_human(info['file_size'])})",
        f"architecture:  {info['architecture']}",
        f"type:          {info['type']}",
        f"layers:        {info['block_count']}",
        f"block size:    {info['block_size']}",
        f"mask token:    {info['mask_token_id']}",
        f"tensors:       {info['tensor_count']} ("
        + ", ".join(f"{count} {name}" for name, count in info["tensor_types"].items()) + ")",
        f"diff tensors:  {cov['diff_tensors']} in {cov['layers_with_diff']} layers, "
        f"{cov['complete_layers']} complete ({', '.join(cov['expected_per_layer'])} per layer)",
    ]
    for layer, names in cov["missing"].items():
        lines.append(f"  layer {layer}: missing {', '.join(names)}")
    if info["base"]:
        lines.append("for base:      " + ", ".join(f"{k}={v}" for k, v in info["base"].items()))
    return "\n".join(lines)


def configure(parser) -> None:
    parser.add_argument("file", metavar="FILE.gguf", help="a model, merged or adapter GGUF")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args) -> int:
    info = inspect_gguf(args.file)
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
