"""Prompt sets for `check` and `bench`: built-ins from the PyPI data packages, or a JSONL file.

Split: GSM8K test problems 0-199 are the benchmark/held-out set (`gsm8k`); the trainer draws only from problems
200 and up (bench/train_prompts.py). HumanEval is benchmark-only.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from . import assets
from .errors import PyorthrusError

GSM8K_BENCH_SIZE = 200

CHAT_PROMPTS = [
    "Give me three tips for keeping houseplants alive.",
    "Explain what a rainbow is to a ten-year-old.",
    "Write a short, friendly email declining a meeting invitation.",
    "What are the main differences between a lake and a sea?",
    "Describe a good morning routine in five steps.",
    "Why do cats purr? Answer briefly.",
    "Suggest a name for a bakery and explain the choice.",
    "Summarize the water cycle in a paragraph.",
]
MATH_PROMPTS = [  # written for pyorthrus, not taken from any benchmark
    "A baker makes 24 rolls and sells 3/4 of them. How many rolls are left? Think step by step.",
    "Tom has 5 boxes with 12 pencils each. He gives away 17 pencils. How many remain?",
    "A train travels 180 km in 2 hours. What is its average speed in km per hour?",
    "If a shirt costs $20 after a 20% discount, what was its original price?",
]
CODE_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that returns the largest element of a list without max().",
    "Write a function in Python that counts the vowels in a string.",
    "Write a Python function to merge two sorted lists into one sorted list.",
]
STRUCTURED_PROMPTS = [  # lists, tables and JSON, written for pyorthrus
    "List five fruits that are high in vitamin C, one per line.",
    "Return a JSON object with the keys name, age and city for a fictional person.",
    "Give a numbered list of six steps to fix a flat bicycle tire.",
    "Write a JSON array of four planets, each an object with its name and its order from the sun.",
    "Make a markdown table of three programming languages and the year each first appeared.",
    "Give me a shopping list for pancakes as bullet points.",
    "Output a JSON object describing a book: title, author, year and a list of genres.",
    "List the seven days of the week in reverse order, separated by commas.",
]
BUILTIN = ("mix", "chat", "gsm8k", "humaneval")


def _mix() -> list[dict]:
    return [{"kind": kind, "prompt": text} for kind, texts in
            (("chat", CHAT_PROMPTS[:4]), ("math", MATH_PROMPTS), ("code", CODE_PROMPTS)) for text in texts]


def _gsm8k() -> list[dict]:
    return [{"kind": "math", "prompt": r["question"], "answer": r["answer"].rsplit("####", 1)[-1].strip()}
            for r in assets.gsm8k_test_rows()[:GSM8K_BENCH_SIZE]]


def _humaneval() -> list[dict]:
    with gzip.open(assets.humaneval_jsonl_gz(), "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"kind": "code", "prompt": "Complete this Python function.\n\n" + r["prompt"], "task_id": r["task_id"]}
            for r in rows]


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PyorthrusError(f"{path}: cannot read prompts ({exc.strerror})") from exc
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise PyorthrusError(f"{path}:{number}: expected a JSON object with a \"prompt\" string")
        prompts.append({"kind": "file", **row})
    if not prompts:
        raise PyorthrusError(f"{path}: no prompts")
    return prompts


def load(source: str, limit: int | None = None) -> list[dict]:
    """Prompts as {"kind", "prompt", ...} dicts: a built-in set name or a JSONL path."""
    if source in BUILTIN:
        prompts = {"mix": _mix, "chat": lambda: [{"kind": "chat", "prompt": t} for t in CHAT_PROMPTS],
                   "gsm8k": _gsm8k, "humaneval": _humaneval}[source]()
    else:
        prompts = _jsonl(Path(source))
    return prompts[:limit] if limit else prompts
