"""The device's pass-cost curve: seconds of one K-token decode in the AR (verify) and diffusion (draft) views.

Whether Orthrus pays on a machine is decided by how a K-token pass compares with a one-token step (DESIGN.md
section 4): about one step on datacenter GPUs, several on CPUs and Macs. `block_size="auto"` measures a few K
values once and interpolates between them; `pyorthrus bench` measures more values with more repetitions.
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


def auto_sizes(trained_k: int) -> list[int]:
    """The K values block_size='auto' measures: 1, powers of two and the trained K (interpolated in between)."""
    return sorted({1, trained_k} | {2 ** i for i in range(1, trained_k.bit_length()) if 2 ** i <= trained_k})


def _timed_pass(llm, tokens: list[int], start_pos: int, diffusion: bool) -> float:
    """Seconds for one decode of `tokens` at start_pos.. with logits for every row; its cells are removed after,
    so the cache is back where it was."""
    import llama_cpp

    lib, ctx = llm._lib, llm._ctx
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start_pos + i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        lib.llama_orthrus_set_diffusion(ctx, diffusion)
        start = time.perf_counter()
        status = llama_cpp.llama_decode(ctx, batch)
        elapsed = time.perf_counter() - start
    finally:
        lib.llama_orthrus_set_diffusion(ctx, False)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, start_pos, -1)
        llama_cpp.llama_batch_free(batch)
    if status != 0:
        raise PyorthrusError(f"llama_decode returned {status} for a {len(tokens)}-token profiling pass")
    return elapsed


def measure_pass_costs(llm, sizes, prefix_len: int = 128, reps: int = 3,
                       statistic=statistics.median) -> PassCosts:
    """Seconds of one K-token pass per K in `sizes` (K = 1 always included), in both views, after a prefix_len-token
    cache (less where the context is smaller): `statistic` (median, or min for a cost curve that a busy machine
    cannot skew) of `reps` passes. Each K is timed the way decoding runs it: K = 1 as consecutive one-token steps,
    K >= 2 as consecutive draft/verify pairs, after WARMUP_PASSES untimed ones. Timing the sizes round-robin would
    change the graph on every pass, which is not what decoding does and which, on a GPU, keeps llama.cpp from
    reusing its graph and CUDA from replaying it (a one-token step then looked twice as slow as it is). Clears the
    context's cache: call it between generations."""
    sizes = sorted(set(sizes) | {1})
    prefix_len = max(1, min(prefix_len, llm.llm.n_ctx() - sizes[-1] - 1))
    text_tokens = llm.tokenize(" ".join(CHAT_PROMPTS))
    prompt = (text_tokens * (prefix_len // len(text_tokens) + 1))[:prefix_len + 1]
    llm._prefill(prompt)
    position = len(prompt) - 1
    t_verify, t_draft = {}, {}
    for k in sizes:
        views = (False, True) if k > 1 else (False,)
        times: dict[bool, list[float]] = {view: [] for view in views}
        for rep in range(WARMUP_PASSES + reps):
            for diffusion in views:
                elapsed = _timed_pass(llm, prompt[:k], position, diffusion)
                if rep >= WARMUP_PASSES:
                    times[diffusion].append(elapsed)
        t_verify[k] = statistic(times[False])
        if k > 1:
            t_draft[k] = statistic(times[True])
    return PassCosts(position, t_verify, t_draft)
