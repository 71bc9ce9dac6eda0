"""Base weights of a full Orthrus checkpoint -> base GGUF, via the vendored llama.cpp `convert_hf_to_gguf.py`.

The vendored converter is the one users already trust, so we do not re-implement it: it runs in a subprocess on a
temporary base-only view of the checkpoint (a plain Qwen3/Llama config, the tokenizer files, and safetensors shards
holding only the base tensors, written one source shard at a time).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyorthrus.errors import PyorthrusError
from pyorthrus.formats import QWEN35
from pyorthrus.llama_source import patched_source_dir

from .checkpoint import OrthrusCheckpoint

HF_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
                    "qwen35": "Qwen3_5ForCausalLM"}
HF_MODEL_TYPES = {"qwen35": "qwen3_5_text"}  # where transformers' model_type is not the base's name
_ORTHRUS_CONFIG_KEYS = ("block_size", "mask_token_id", "base_model_type")
_SKIPPED_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer_config.json"}


def tokenizer_config_as_mapping(config: dict) -> dict:
    """Upstream checkpoints list `extra_special_tokens` as a list; transformers 4.x wants a mapping and fails.
    Fold the list into `additional_special_tokens`, which every version reads."""
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return config
    fixed = {k: v for k, v in config.items() if k != "extra_special_tokens"}
    fixed["additional_special_tokens"] = list(dict.fromkeys(list(config.get("additional_special_tokens") or []) + extra))
    return fixed


def write_base_view(ckpt: OrthrusCheckpoint, view: Path) -> None:
    """A plain base checkpoint in `view`: no diff tensors, no Orthrus config keys; user files are not touched.
    Shards are rewritten one at a time with safetensors' own writer (torch: the vendored converter needs it too)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = {k: v for k, v in ckpt.hf_config.items() if k not in _ORTHRUS_CONFIG_KEYS}
    config["model_type"] = HF_MODEL_TYPES.get(ckpt.config.base, ckpt.config.base)
    config["architectures"] = [HF_ARCHITECTURES[ckpt.config.base]]
    (view / "config.json").write_text(json.dumps(config, indent=2))
    tok_config = ckpt.dir / "tokenizer_config.json"
    if tok_config.is_file():
        fixed = tokenizer_config_as_mapping(json.loads(tok_config.read_text()))
        (view / "tokenizer_config.json").write_text(json.dumps(fixed, indent=2, ensure_ascii=False))
    for item in ckpt.dir.iterdir():
        if item.is_file() and item.name not in _SKIPPED_FILES and not item.name.endswith(".safetensors"):
            shutil.copyfile(item, view / item.name)
    weight_map = {}
    for shard in ckpt.shard_paths():
        names = [e.name for e in ckpt.entries.values() if e.shard == shard and "_diff" not in e.name]
        if names:
            with safe_open(str(shard), framework="pt") as fh:
                save_file({name: fh.get_tensor(name) for name in names}, str(view / shard.name),
                          metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, shard.name))
    (view / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def convert_base_to_gguf(ckpt: OrthrusCheckpoint, outtype: str, work_dir: Path, progress: bool = False) -> Path:
    """Run the vendored converter on the base part of `ckpt`; return the GGUF written inside `work_dir`. progress:
    say so first on stderr (it prints nothing of its own here and takes minutes on a large model)."""
    if importlib.util.find_spec("torch") is None:
        raise PyorthrusError("a merged file without --base runs llama.cpp's convert_hf_to_gguf.py, which needs "
                             "torch, transformers and sentencepiece: pip install torch transformers sentencepiece")
    script = patched_source_dir() / "convert_hf_to_gguf.py"  # unpacked once into the build cache
    if not script.is_file():
        raise PyorthrusError(f"{script}: llama.cpp converter not found; run `pyorthrus build` first or pass --base")
    if progress:
        print(f"running llama.cpp's convert_hf_to_gguf.py on the base weights of {ckpt.dir} ({outtype})",
              file=sys.stderr, flush=True)
    view = Path(tempfile.mkdtemp(prefix="base-view-", dir=work_dir))
    write_base_view(ckpt, view)
    out = work_dir / "base.gguf"
    cmd = [sys.executable, str(script), str(view), "--outfile", str(out), "--outtype", outtype]
    if ckpt.config.base == QWEN35:
        cmd.append("--no-mtp")  # the reference keeps Qwen3.5's MTP key in the config but saves no MTP weights
    result = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(view, ignore_errors=True)
    if result.returncode != 0 or not out.is_file():
        lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise PyorthrusError(f"{ckpt.dir}: llama.cpp convert_hf_to_gguf.py failed: {reason}")
    return out
