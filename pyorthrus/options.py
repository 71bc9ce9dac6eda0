"""One validation of the generation options, shared by the Python API, the CLI and the server.

Each check raises an OptionError naming the option by its Python keyword; every surface says it in its own words
(`--temp` on the command line, `temperature` in a request body) through `OptionError.name` and `.requirement`.
The ranges are those of llama.cpp's samplers, with the values it silently treats as "off" refused instead
(a negative temperature or top-k), and NaN/infinity refused everywhere.
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from .errors import PyorthrusError

SEED_LIMIT = 2 ** 32  # llama.cpp seeds are uint32
INT32_MAX = 2 ** 31 - 1  # llama_orthrus_params.top_k is int32: ctypes would wrap a larger value silently
THREADS_PER_CPU = 4  # more threads than this per usable CPU only slows llama.cpp down (1,000 ran at 0.1 tok/s)


class OptionError(PyorthrusError):
    """A generation option out of range. str(): "name value: requirement" in the Python API's words."""

    def __init__(self, name: str, value, requirement: str):
        super().__init__(f"{name} {value!r}: {requirement}")
        self.name, self.value, self.requirement = name, value, requirement


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux's MemAvailable); None where it does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _number(name: str, value, integer: bool = False) -> float:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise OptionError(name, value, "must be an integer" if integer else "must be a number")
    if not integer and not math.isfinite(value):
        raise OptionError(name, value, "must be a finite number")
    return value


def check_sampling(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=0) -> None:
    """temperature >= 0 (0: greedy), top_k in 0 ... 2^31-1 (0: off), top_p in [0, 1] (1: off), min_p in [0, 1]
    (0: off), seed in 0 ... 2^32-1."""
    if _number("temperature", temperature) < 0:
        raise OptionError("temperature", temperature, "must be >= 0 (0: greedy)")
    if not 0 <= _number("top_k", top_k, integer=True) <= INT32_MAX:
        raise OptionError("top_k", top_k, f"must be in 0 ... {INT32_MAX} (0: off)")
    if not 0 <= _number("top_p", top_p) <= 1:
        raise OptionError("top_p", top_p, "must be in [0, 1] (1: off)")
    if not 0 <= _number("min_p", min_p) <= 1:
        raise OptionError("min_p", min_p, "must be in [0, 1] (0: off)")
    if not 0 <= _number("seed", seed, integer=True) < SEED_LIMIT:
        raise OptionError("seed", seed, f"must be in 0 ... {SEED_LIMIT - 1}")


def check_max_tokens(max_tokens) -> None:
    if _number("max_tokens", max_tokens, integer=True) < 1:
        raise OptionError("max_tokens", max_tokens, "must be >= 1")


def check_threads(n_threads) -> None:
    """None (every usable CPU) or 1 ... 4 x the usable CPUs."""
    if n_threads is None:
        return
    limit = THREADS_PER_CPU * usable_cpus()
    if not 1 <= _number("n_threads", n_threads, integer=True) <= limit:
        raise OptionError("n_threads", n_threads, f"must be in 1 ... {limit} ({THREADS_PER_CPU} x the "
                          f"{usable_cpus()} CPUs this process may use)")


def utf8_text(label: str, text: str) -> str:
    """text, unless it holds bytes that were not UTF-8: Python hands those over as lone surrogates
    (surrogateescape), which would fail only once the prompt is tokenized."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise PyorthrusError(f"{label}: not UTF-8 text (undecodable byte at character {exc.start})") from None
    return text


def check_n_ctx(n_ctx) -> None:
    """0 (the model's trained context) or a positive token count."""
    if _number("n_ctx", n_ctx, integer=True) < 0:
        raise OptionError("n_ctx", n_ctx, "must be >= 1 (or 0: the model's trained context)")
