"""`pyorthrus` command line: one entry point, one module per verb.

Each verb module exposes `configure(parser)` (adds its arguments) and `run(args) -> int` (the exit code). Modules
are imported only when their verb runs, so `pyorthrus build` works before numpy, gguf or llama_cpp are importable.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .errors import PyorthrusError

# verb -> (module, one-line help)
VERBS = {
    "build": ("pyorthrus.build", "build and install the patched llama.cpp (llama-cpp-python) into this environment"),
    "convert": ("pyorthrus.convert.cli", "convert an Orthrus HF checkpoint to an adapter or merged GGUF"),
    "inspect": ("pyorthrus.inspect", "describe a GGUF file: architecture, type, block size, diff-tensor coverage"),
    "generate": ("pyorthrus.generate", "generate a continuation of one prompt, streamed, with a stats footer"),
    "chat": ("pyorthrus.chat", "chat interactively using the model's chat template"),
    "serve": ("pyorthrus.serve", "serve a model with Orthrus decoding behind an OpenAI-compatible HTTP API"),
    "check": ("pyorthrus.check.cli", "check that Orthrus output equals plain AR output of the same model"),
    "bench": ("pyorthrus.bench.cli", "benchmark AR vs Orthrus vs prompt lookup side by side, with the device profile"),
    "train": ("pyorthrus.train.cli", "train an Orthrus adapter for a base model (self-distillation, forward KL)"),
    "demo": ("pyorthrus.demo", "run the embedded default model (SmolLM2-135M) in AR and Orthrus mode side by side"),
}


def _parser(verbs: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyorthrus",
        description="Orthrus parallel decoding for llama.cpp and GGUF. Run `pyorthrus VERB --help` for each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, help_text) in verbs.items():
        sub.add_parser(verb, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(VERBS)
    # Import only the chosen verb's module, then re-parse with its arguments attached.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(VERBS[known.verb][0])
    sub_parser = parser._subparsers._group_actions[0].choices[known.verb]  # noqa: SLF001 - argparse has no getter
    module.configure(sub_parser)
    args = parser.parse_args(argv)
    # library warnings (e.g. low-precision diff weights) as one line each, like the errors below
    warnings.showwarning = lambda message, *_, **__: print(f"pyorthrus {known.verb}: warning: {message}",
                                                           file=sys.stderr)
    try:
        return int(module.run(args) or 0)
    except PyorthrusError as exc:
        print(f"pyorthrus {known.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyorthrus {known.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
