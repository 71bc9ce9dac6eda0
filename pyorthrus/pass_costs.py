"""The device's pass-cost curve: seconds of one K-token decode in the AR (verify) and diffusion (draft) views.

Whether Orthrus pays on a machine is decided by how a K-token pass compares with a one-token step (docs/design.md,
"Cost"): about one step on datacenter GPUs, several on CPUs and Macs. `block_size="auto"` measures a few K
values once and interpolates between them; `pyorthrus bench` measures more values with more repetitions.

Part of the runtime (pyorthrus.auto plans with PassCosts, pyorthrus.profiles keeps them on disk): it imports only the
runtime below it, and the benchmark package (pyorthrus.bench, bench/passcost.py) builds on it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from .errors import PyorthrusError
from .prompts import CHAT_PROMPTS

BENCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32)
# untimed passes before each K's timed ones: the first builds the graph; ggml-cuda captures a CUDA graph on the
# second pass that finds it unchanged and replays it from the third on
WARMUP_PASSES = 2
MAX_WARMUP_PASSES = 6
WARM_TOLERANCE = 0.10  # two warm-up passes this close (relative) count as stable
MAX_REMEASURES = 2


@dataclass
class PassCosts:
    """Median seconds of one pass per measured K, after a `prefix_tokens`-token cache. t_verify_s[1] is the plain
    AR step; t_draft_s has K >= 2 only. Other K values are interpolated linearly."""
    prefix_tokens: int
    t_verify_s: dict[int, float]
    t_draft_s: dict[int, float]

    @property
    def t_step_s(self) -> float:
        return self.t_verify_s[1]

    def verify(self, k: int) -> float:
        return _interpolate(self.t_verify_s, k)

    def draft(self, k: int) -> float:
        return _interpolate(self.t_draft_s, k)

    def cycle(self, k: int) -> float:
        """Seconds of one Orthrus cycle at block size k: a draft and a verify pass."""
        return self.draft(k) + self.verify(k)

    def as_dict(self) -> dict:
        passes = {}
        for k, verify in sorted(self.t_verify_s.items()):
            draft = self.t_draft_s.get(k)
            passes[k] = {"t_verify_s": verify, "t_draft_s": draft, "pass_over_step": verify / self.t_step_s,
                         # even if every draft were accepted: K tokens per two passes
                         "ceiling_speedup": k * self.t_step_s / (verify + draft) if draft else None}
        return {"prefix_tokens": self.prefix_tokens, "t_step_s": self.t_step_s, "passes": passes}

    @classmethod
    def from_dict(cls, data: dict) -> "PassCosts":
        """The inverse of as_dict (JSON turns the K keys into strings)."""
        passes = {int(k): row for k, row in data["passes"].items()}
        return cls(data["prefix_tokens"], {k: row["t_verify_s"] for k, row in passes.items()},
                   {k: row["t_draft_s"] for k, row in passes.items() if row["t_draft_s"]})


def _interpolate(table: dict[int, float], k: int) -> float:
    sizes = sorted(table)
    if not sizes[0] <= k <= sizes[-1]:
        raise PyorthrusError(f"block size {k} is outside the profiled range {sizes[0]} ... {sizes[-1]}")
    return float(np.interp(k, sizes, [table[s] for s in sizes]))


def auto_sizes(trained_k: int, fused: bool = False, largest_pass: int = 0) -> list[int]:
    """The K values block_size='auto' measures: 1, powers of two and the trained K (interpolated in between); with
    fused cycles up to 2 x trained K (a fused pass decodes 2K tokens); up to largest_pass where a tree's verify pass
    (budget + 1 tokens) is longer still."""
    largest = max(2 * trained_k if fused else trained_k, largest_pass)
    return sorted({1, largest} | {2 ** i for i in range(1, largest.bit_length()) if 2 ** i <= largest})


def timed_pass(llm, tokens: list[int], start_pos: int, diffusion: bool) -> float:
    """Seconds for one decode of `tokens` at start_pos.. with an output for every row (in argmax mode, as greedy
    cycles run), until its result is on the host; its cells are removed after, so the cache is back where it was."""
    import llama_cpp
    from llama_cpp._internals import LlamaBatch

    from . import _lib as lib
    from .engine import fill_batch

    ctx = llm.ctx
    batch = LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1, verbose=False)
    try:
        fill_batch(batch, [(token, start_pos + i, 0, True) for i, token in enumerate(tokens)])
        lib.llama_orthrus_set_diffusion(ctx, diffusion)
        lib.llama_orthrus_set_argmax(ctx, True)  # as greedy decoding runs its passes
        start = time.perf_counter()
        status = llama_cpp.llama_decode(ctx, batch.batch)
        lib.llama_orthrus_get_argmax_ith(ctx, len(tokens) - 1)  # waits for the pass (asynchronous backends)
        elapsed = time.perf_counter() - start
    finally:
        lib.llama_orthrus_set_argmax(ctx, False)
        lib.llama_orthrus_set_diffusion(ctx, False)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, start_pos, -1)
        batch.close()
    if status != 0:
        raise PyorthrusError(f"llama_decode returned {status} for a {len(tokens)}-token profiling pass")
    return elapsed


def _timed_pair(llm, tokens, position, views) -> dict[bool, float]:
    return {diffusion: timed_pass(llm, tokens, position, diffusion) for diffusion in views}


def _measure_size(llm, tokens, position, reps, statistic) -> dict[bool, float]:
    """One K: warm-up passes until two in a row agree within WARM_TOLERANCE in every view (at least WARMUP_PASSES,
    at most MAX_WARMUP_PASSES: cold weights after a load or a quantization read seconds per pass at first), then
    `reps` timed ones."""
    views = (False, True) if len(tokens) > 1 else (False,)
    previous = _timed_pair(llm, tokens, position, views)
    for n in range(1, MAX_WARMUP_PASSES):
        current = _timed_pair(llm, tokens, position, views)
        stable = all(abs(current[v] - previous[v]) <= WARM_TOLERANCE * min(current[v], previous[v]) for v in views)
        previous = current
        if n + 1 >= WARMUP_PASSES and stable:
            break
    times: dict[bool, list[float]] = {view: [] for view in views}
    for _ in range(reps):
        for view, elapsed in _timed_pair(llm, tokens, position, views).items():
            times[view].append(elapsed)
    return {view: statistic(values) for view, values in times.items()}


def not_monotone(table: dict[int, float]) -> list[int]:
    """Sizes whose pass is clearly cheaper than a smaller size's (a busy machine, not the device)."""
    sizes = sorted(table)
    return [k for i, k in enumerate(sizes) if any(table[k] < (1 - WARM_TOLERANCE) * table[j] for j in sizes[:i])]


def _prefilled_prefix(llm, prefix_len: int) -> list[int]:
    """A prefix_len-token cache of chat text (plus the known, uncached token after it); returns the tokens."""
    text_tokens = llm.tokenize(" ".join(CHAT_PROMPTS))
    prompt = (text_tokens * (prefix_len // len(text_tokens) + 1))[:prefix_len + 1]
    llm.engine.prefill(prompt)
    return prompt


def measure_pass_costs(llm, sizes, prefix_len: int = 128, reps: int = 3,
                       statistic=statistics.median) -> PassCosts:
    """Seconds of one K-token pass per K in `sizes` (K = 1 always included), in both views, after a prefix_len-token
    cache (less where the context is smaller): `statistic` (median, or min for a cost curve that a busy machine
    cannot skew) of `reps` passes. Each K is timed the way decoding runs it: K = 1 as consecutive one-token steps,
    K >= 2 as consecutive draft/verify pairs, after warm-up passes that last until the timings are stable. Timing
    the sizes round-robin would change the graph on every pass, which is not what decoding does and which, on a
    GPU, keeps llama.cpp from reusing its graph and CUDA from replaying it (a one-token step then looked twice as
    slow as it is). A curve that is not monotone in K (a pass cheaper than a smaller one) is measured again where
    it breaks, up to MAX_REMEASURES times; what still breaks it then is raised to the smaller size's cost, so that
    the curve `auto` plans with never rewards a larger block for noise. Clears the context's cache: call it between
    generations."""
    sizes = sorted(set(sizes) | {1})
    prefix_len = max(1, min(prefix_len, llm.llm.n_ctx() - sizes[-1] - 1))
    prompt = _prefilled_prefix(llm, prefix_len)
    position = len(prompt) - 1
    measured = {k: _measure_size(llm, prompt[:k], position, reps, statistic) for k in sizes}
    for _ in range(MAX_REMEASURES):
        bad = set(not_monotone({k: m[False] for k, m in measured.items()}))
        bad |= set(not_monotone({k: m[True] for k, m in measured.items() if k > 1}))
        if not bad:
            break
        for k in sorted(bad):
            measured[k] = _measure_size(llm, prompt[:k], position, reps, statistic)
    t_verify = monotone({k: m[False] for k, m in measured.items()})
    t_draft = monotone({k: m[True] for k, m in measured.items() if k > 1})
    return PassCosts(position, t_verify, t_draft)


def monotone(table: dict[int, float]) -> dict[int, float]:
    out, floor = {}, 0.0
    for k in sorted(table):
        floor = max(floor, table[k])
        out[k] = floor
    return out


def measure_cycle_costs(llm, sizes, prefix_len: int = 128, reps: int = 3,
                        statistic=statistics.median) -> dict[int, float]:
    """Seconds of one whole `llama_orthrus_cycle` call per K (greedy: draft pass, cell removal, verify pass over the
    full block, acceptance, trim), called from Python as decoding calls it, after a prefix_len-token cache; the
    cache is put back after each. A cycle always verifies its full block, so its cost does not depend on how much
    is accepted: this is the in-loop cost that the profile's draft + verify passes predict."""
    import ctypes

    import llama_cpp

    from . import _lib as lib

    ctx = llm.ctx
    mem = llama_cpp.llama_get_memory(ctx)
    prompt = _prefilled_prefix(llm, prefix_len)
    position = len(prompt) - 1
    params = lib.llama_orthrus_default_params()
    stats = lib.llama_orthrus_stats()
    out = (lib.llama_token * max(sizes))()
    costs = {}
    for k in sorted(sizes):
        params.block_size = k
        times = []
        for rep in range(WARMUP_PASSES + reps):
            start = time.perf_counter()
            n = lib.llama_orthrus_cycle(ctx, 0, prompt[-1], ctypes.byref(params), out, k, ctypes.byref(stats))
            elapsed = time.perf_counter() - start
            llama_cpp.llama_memory_seq_rm(mem, 0, position, -1)
            if n < 0:
                raise PyorthrusError(f"llama_orthrus_cycle failed at K={k}: {lib.last_error()}")
            if rep >= WARMUP_PASSES:
                times.append(elapsed)
        costs[k] = statistic(times)
    return costs
