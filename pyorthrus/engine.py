"""The decode engine: one llama_context driven through prefill, Orthrus cycles and plain AR steps, all in C.

`pyorthrus.Orthrus` owns the model and the options; this is what runs the passes. The pass-cost profile
(pyorthrus.pass_costs) and the checker use it directly. Cache convention of `llama_orthrus_cycle` (llama.h):
the newest committed token is known but not cached, so a cycle or a step may follow either.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import PyorthrusError
from .stats import GenerationStats


@dataclass
class Chunk:
    """What a decode round yields: the newly committed tokens and, on the last round, why generation ended."""
    tokens: list[int]
    finish_reason: str | None


class DecodeEngine:
    def __init__(self, llm, trained_block_size: int):
        """llm: the llama_cpp.Llama whose context this engine drives; trained_block_size: the most tokens one
        cycle may commit (sizes the output buffer)."""
        import llama_cpp

        from . import _lib

        self.llm, self.ctx, self.lib = llm, llm.ctx, _lib
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.trained_block_size = trained_block_size
        self.cached: list[int] | None = None  # the tokens in the cache from position 0, if a generation left them

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (the stop set the PyTorch reference decodes with)."""
        return [t for t in range(self.llm.n_vocab()) if self.is_eog(t)]

    def prefill(self, prompt: Sequence[int], reuse: bool = False) -> int:
        """Cache all but the last prompt token (the last one is x_s, known but not cached). reuse: keep the cells
        of the longest prefix the cache already holds (what the last generation left, see finish()) and decode only
        the rest; else clear the cache first. Returns the prompt tokens reused.

        Reuse is lossless on the strict CPU build: there a token's K/V do not depend on which batch computed them
        (a K-token pass gives the logits of K one-token steps, bit for bit), so the cells left by earlier prefills,
        cycles and steps equal those a fresh prefill would write. On GPUs they may differ as a K-token batch differs
        from one-token steps: at near-ties only, as with Orthrus itself."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self.ctx)
        head = list(prompt[:-1])
        cached, self.cached = self.cached, None  # unknown until a generation ends cleanly
        keep = _common_prefix(cached, head) if reuse and cached is not None else 0
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1):
            llama_cpp.llama_memory_clear(memory, True)
            keep = 0
        for start in range(keep, len(head), self.llm.n_batch):
            chunk = head[start:start + self.llm.n_batch]
            ids = (llama_cpp.llama_token * len(chunk))(*chunk)  # the batch only points at it: keep it alive
            batch = llama_cpp.llama_batch_get_one(ids, len(chunk))
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise PyorthrusError("llama_decode failed on the prompt")
        return keep

    def finish(self, cached: Sequence[int] | None) -> None:
        """A generation ended: `cached` are the tokens its cells hold from position 0 (the prompt, then every
        committed token but the newest: (prompt + tokens)[:-1]), None if unknown (it failed inside a pass). Cells past
        them (a fused pass's next draft block) are dropped, so the next prefill can reuse exactly these."""
        import llama_cpp

        self.lib.llama_orthrus_set_argmax(self.ctx, False)
        memory = llama_cpp.llama_get_memory(self.ctx)
        n = len(cached) if cached is not None else 0
        if cached is None or not llama_cpp.llama_memory_seq_rm(memory, 0, n, -1) \
                or llama_cpp.llama_memory_seq_pos_max(memory, 0) != n - 1:
            self.forget()
            return
        self.cached = list(cached)

    def forget(self) -> None:
        """The cache holds something else than a generation left (profiling passes, a one-shot decode)."""
        self.cached = None

    def decode_one(self, token: int) -> np.ndarray:
        """Decode one token at the next position; a view of its logits (valid until the next decode)."""
        import llama_cpp

        ids = (llama_cpp.llama_token * 1)(token)
        batch = llama_cpp.llama_batch_get_one(ids, 1)
        if llama_cpp.llama_decode(self.ctx, batch) != 0:
            raise PyorthrusError("llama_decode failed")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.llm.n_vocab(),))

    def cycle(self, last, block_size, params, out, n_max, counters, stats: GenerationStats) -> tuple[list[int], bool]:
        """One llama_orthrus_cycle at block_size; its counters (a llama_orthrus_stats) go into stats. (committed
        tokens, stopped)"""
        params.block_size = block_size
        n = self.lib.llama_orthrus_cycle(self.ctx, 0, last, ctypes.byref(params), out, n_max, ctypes.byref(counters))
        if n < 0:
            raise PyorthrusError(f"llama_orthrus_cycle failed: {self.lib.last_error()}")
        stats.n_cycles += 1
        stats.n_passes += counters.n_passes
        stats.n_carried += counters.carried
        stats.cycles.append((block_size, n))
        stats.accepted[counters.n_accepted] += 1
        stats.t_draft_s += counters.t_draft_us / 1e6
        stats.t_verify_s += counters.t_verify_us / 1e6
        stats.n_tree_nodes += counters.n_tree_nodes
        stats.n_tree_cycles += counters.n_tree_nodes > 0
        stats.n_offchain += counters.n_offchain > 0
        stats.n_redecoded += counters.n_redecoded
        stats.t_redecode_s += counters.t_redecode_us / 1e6
        return list(out[:n]), bool(counters.stopped)

    def step(self, last, params, out, counters) -> tuple[list[int], bool]:
        """One plain AR step (llama_orthrus_step). (the committed token, stopped)"""
        if self.lib.llama_orthrus_step(self.ctx, 0, last, ctypes.byref(params), out, ctypes.byref(counters)) != 1:
            raise PyorthrusError(f"llama_orthrus_step failed: {self.lib.last_error()}")
        return [out[0]], bool(counters.stopped)

    def rounds(self, prompt, max_tokens, block_size, fused, auto, params, stop_tokens,
               stats: GenerationStats) -> Iterator[Chunk]:
        """One chunk per round after prefill(prompt): an Orthrus cycle at block_size, or a plain AR step
        (block_size 1, or when the auto controller says so). A greedy generation runs in argmax mode throughout
        (each pass returns its rows' argmax, not their logits), so steps and cycles never switch it and rebuild
        their graphs. The caller ends it with finish()."""
        lib = self.lib
        stop_array = (lib.llama_token * max(1, len(stop_tokens)))(*stop_tokens)
        params.stop_tokens, params.n_stop_tokens = stop_array, len(stop_tokens)
        out = (lib.llama_token * max(1, self.trained_block_size))()
        counters = lib.llama_orthrus_stats()
        # finish() turns it off: a generator abandoned mid-way must not touch the context when it is collected
        lib.llama_orthrus_set_argmax(self.ctx, params.temperature <= 0)
        yield from self._rounds(prompt[-1], max_tokens, block_size, fused, auto, params, out, counters, stats)

    def _rounds(self, last, max_tokens, block_size, fused, auto, params, out, counters, stats) -> Iterator[Chunk]:
        produced = 0
        while produced < max_tokens:
            k = auto.choose(max_tokens - produced) if auto else block_size
            start = time.perf_counter()
            if k == 1:
                tokens, stopped = self.step(last, params, out, counters)
                stats.n_passes += 1
                elapsed = time.perf_counter() - start
                stats.t_ar_s += elapsed
                stats.n_ar_steps += 1
                if auto:
                    auto.observe_step(elapsed)
            else:
                params.fused = auto.next_fused if auto else fused
                if auto:
                    params.tree_nodes = auto.next_tree
                tokens, stopped = self.cycle(last, k, params, out, min(k, max_tokens - produced), counters, stats)
                if auto:
                    auto.observe_cycle(k, counters.n_accepted, time.perf_counter() - start, counters.fused,
                                       counters.carried, counters.n_tree_nodes)
            produced += len(tokens)
            last = tokens[-1]
            if stopped:
                yield Chunk(tokens, "stop")
                return
            yield Chunk(tokens, "length" if produced >= max_tokens else None)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fill_batch(batch, rows: Sequence[tuple[int, int, int, bool]]) -> None:
    """Set a llama_cpp._internals.LlamaBatch to `rows`, one (token, position, sequence id, wants logits) each.

    LlamaBatch's own set_batch / add_sequence number the positions from a start for one sequence; a decode step of
    several sequences at different lengths (bench/train_data.py) needs each row's position and sequence given; the
    profile's passes (pass_costs.timed_pass) are filled here too, so one function knows the batch's layout."""
    raw = batch.batch
    for i, (token, pos, seq, logits) in enumerate(rows):
        raw.token[i], raw.pos[i], raw.n_seq_id[i], raw.logits[i] = token, pos, 1, logits
        raw.seq_id[i][0] = seq
    raw.n_tokens = len(rows)
