"""`pyorthrus` command line: one entry point, one module per verb.

Each verb module exposes `configure(parser)` (adds its arguments) and `run(args) -> int` (the exit code). Modules
are imported only when their verb runs, so `pyorthrus build` works before numpy, gguf or llama_cpp are importable.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

from .errors import PyorthrusError
from .options import OptionError

# verb -> (module, one-line help)
VERBS = {
    "build": ("pyorthrus.build", "build and install the patched llama.cpp (llama-cpp-python) into this environment"),
    "convert": ("pyorthrus.convert.cli", "convert an Orthrus HF checkpoint to an adapter or merged GGUF"),
    "inspect": ("pyorthrus.inspect", "describe a GGUF file: architecture, type, block size, diff-tensor coverage"),
    "generate": ("pyorthrus.generate", "generate the reply to one prompt, streamed, with a stats footer"),
    "chat": ("pyorthrus.chat", "chat interactively using the model's chat template"),
    "serve": ("pyorthrus.serve", "serve a model with Orthrus decoding behind an OpenAI-compatible HTTP API"),
    "check": ("pyorthrus.check.cli", "check that Orthrus output equals plain AR output of the same model"),
    "bench": ("pyorthrus.bench.cli", "benchmark AR vs Orthrus vs prompt lookup side by side, with the device profile"),
    "train": ("pyorthrus.train.cli", "train an Orthrus adapter for a base model (self-distillation, forward KL)"),
    "demo": ("pyorthrus.demo", "run the embedded default model (SmolLM2-135M) in AR and Orthrus mode side by side"),
}


# Python keyword of an option (OptionError.name) -> its flag, the same in every verb that has it
FLAGS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p", "seed": "--seed",
         "max_tokens": "-n", "n_threads": "-t", "n_ctx": "-c", "block_size": "-k",
         "tree": "--tree"}
# what library messages say in the Python API's words -> the same on the command line
CLI_WORDS = {"give it an Orthrus adapter GGUF, or decode plain AR":
             "give its Orthrus adapter (-a ADAPTER.gguf), or decode plain AR (--mode ar)",
             "give a larger context or a smaller block size": "give a larger -c or a smaller -k",
             "tree cycles are not fused: drop fused": "tree cycles are not fused: drop --fused"}
# the exit status of a CLI that SIGPIPE ended (`seq 1000000 | head -1`): 128 + the signal
EXIT_BROKEN_PIPE = 141


def _typed(value) -> str:
    """An option's value as it was typed: --temp -1 was parsed as -1.0."""
    return f"{value:g}" if isinstance(value, float) and value.is_integer() else str(value)


def error_text(exc: PyorthrusError) -> str:
    """A library error in the command line's words: options by their flags, API advice by the flags that take it."""
    text = f"{FLAGS.get(exc.name, exc.name)} {_typed(exc.value)}: {exc.requirement}" \
        if isinstance(exc, OptionError) else str(exc)
    for api, cli in CLI_WORDS.items():
        text = text.replace(api, cli)
    return text


def missing_dependency(verb: str, module: str) -> str:
    """Which package a verb lacks and the pip extra that brings it (the verb's own extra where it has one)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("pyorthrus") or []
    except PackageNotFoundError:  # run from a checkout that was never installed
        requirements = []
    extras = [m.group(2) for m in (re.match(r"([\w.-]+).*extra *== *['\"](\w+)", r) for r in requirements)
              if m and m.group(1).lower().replace("-", "_") == module.lower()]
    extra = verb if verb in extras else next(iter(extras), None)
    return f"needs the Python package {module}, which is not installed" + \
        (f" (pip install 'pyorthrus[{extra}]')" if extra else "")


def _parser(verbs: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyorthrus",
        description="Orthrus parallel decoding for llama.cpp and GGUF. Run `pyorthrus VERB --help` for each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (_, help_text) in verbs.items():
        sub.add_parser(verb, help=help_text, description=help_text)
    return parser


def _run(verb: str, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Import only the chosen verb's module, re-parse with its arguments attached, and run it."""
    module = importlib.import_module(VERBS[verb][0])
    sub_parser = parser._subparsers._group_actions[0].choices[verb]  # noqa: SLF001 - argparse has no getter
    module.configure(sub_parser)
    args = parser.parse_args(argv)
    # library warnings (e.g. low-precision diff weights) as one line each, like the errors below
    warnings.showwarning = lambda message, *_, **__: print(f"pyorthrus {verb}: warning: {message}", file=sys.stderr)
    code = int(module.run(args) or 0)
    sys.stdout.flush()  # a reader gone (`| head -1`) shows here, not as an exception at interpreter exit
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(VERBS)
    verb = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)[0].verb
    try:
        return _run(verb, parser, argv)
    except PyorthrusError as exc:
        print(f"pyorthrus {verb}: error: {error_text(exc)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an optional dependency (torch for train), not one of pyorthrus's modules
        if not exc.name or exc.name.partition(".")[0] == "pyorthrus":
            raise
        print(f"pyorthrus {verb}: error: {missing_dependency(verb, exc.name)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of stdout left: stop quietly, as CLIs do. What is still buffered goes to /dev/null, or Python
        # would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"pyorthrus {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
