"""`pyorthrus.Orthrus`: a llama_cpp.Llama whose generation runs Orthrus draft/verify cycles in C.

The wrapped `llama_cpp.Llama` supplies the model, context, tokenizer and chat template; this class adds the
adapter, the decode loop (one `llama_orthrus_cycle` call per cycle) and the statistics. `mode="ar"` runs the very
same model and context one token per step, which is what Orthrus output is compared against. `block_size="auto"`
chooses the block size, or a plain AR step, before every round (pyorthrus.auto).
"""
from __future__ import annotations

import codecs
import contextlib
import copy
import ctypes
import numbers
import os
import re
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import PyorthrusError

MODES = ("orthrus", "ar")
AUTO = "auto"
_model_params_lock = threading.Lock()


@contextlib.contextmanager
def _strict_cpu_model_params():
    """Batch-invariant CPU run settings (DESIGN.md section 4): a K-token verify must give the very logits K single
    steps give, or greedy Orthrus and AR can part on near-ties. ggml-cpu's tiled K-quant matmul is switched off
    through GGML_CPU_TILED_MM=0 (read once, at the first matmul in the process: `import pyorthrus` sets it, this is
    the fallback for a process that imported llama_cpp first) and weight repacking through use_extra_bufts=False,
    which llama_cpp.Llama does not expose: its call to llama_model_default_params is wrapped for the duration of
    the load."""
    import llama_cpp.llama_cpp as lowlevel

    os.environ["GGML_CPU_TILED_MM"] = "0"
    with _model_params_lock:
        default = lowlevel.llama_model_default_params

        def strict_default():
            params = default()
            params.use_extra_bufts = False
            return params

        lowlevel.llama_model_default_params = strict_default
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = default


GGML_LOG_LEVEL_ERROR = 4  # ggml.h of the pinned llama.cpp (llama-cpp-python's own table predates it)


@contextlib.contextmanager
def load_errors_kept(errors: list[str]):
    """While loading, keep the errors llama.cpp logs (the first says why it refuses a file, e.g. "failed to read
    key-value pairs"), which llama-cpp-python's ValueError leaves out; every message still reaches llama-cpp-python's
    own log callback."""
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        if level == GGML_LOG_LEVEL_ERROR:
            message = text.decode("utf-8", "replace").strip()
            # "llama_model_load: error loading model: error loading model vocabulary: REASON" -> "REASON"
            errors.append(re.sub(r"^((\w+|error loading model( \w+)?): )+", "", message))
        _logger.llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


@dataclass
class GenerationStats:
    mode: str
    block_size: int | str  # K, or "auto"
    n_prompt: int = 0
    n_generated: int = 0
    n_cycles: int = 0  # Orthrus cycles (mode "ar": AR steps)
    n_ar_steps: int = 0  # plain AR steps that block_size="auto" chose instead of a cycle
    n_passes: int = 0  # forward passes of the decode rounds: 2 per cycle, 1 per carried fused cycle or AR step
    n_carried: int = 0  # fused cycles that reused the draft their predecessor's pass made (no draft pass)
    cycles: list[tuple[int, int]] = field(default_factory=list)  # (K, committed tokens) per Orthrus cycle, in order
    accepted: Counter = field(default_factory=Counter)  # accepted drafts per cycle -> count
    t_profile_s: float = 0.0  # block_size="auto" measuring the pass costs (first generation only); not in t_total_s
    t_prefill_s: float = 0.0
    t_first_token_s: float = 0.0  # prefill + the first decode round
    t_draft_s: float = 0.0
    t_verify_s: float = 0.0
    t_ar_s: float = 0.0  # one-token AR steps (mode "ar", or chosen by block_size="auto")
    t_total_s: float = 0.0  # prefill excluded

    @property
    def tokens_per_cycle(self) -> float:
        """Tokens committed per Orthrus cycle (AR steps taken by block_size="auto" left out)."""
        return (self.n_generated - self.n_ar_steps) / self.n_cycles if self.n_cycles else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.n_generated / self.t_total_s if self.t_total_s else 0.0

    def as_dict(self) -> dict:
        return {"mode": self.mode, "block_size": self.block_size, "n_prompt": self.n_prompt,
                "n_generated": self.n_generated, "n_cycles": self.n_cycles, "n_ar_steps": self.n_ar_steps,
                "n_passes": self.n_passes, "n_carried": self.n_carried,
                "tokens_per_cycle": self.tokens_per_cycle, "tokens_per_second": self.tokens_per_second,
                "accepted_histogram": {int(k): v for k, v in sorted(self.accepted.items())},
                "block_size_histogram": dict(sorted(Counter(k for k, _ in self.cycles).items())),
                "t_profile_s": self.t_profile_s, "t_prefill_s": self.t_prefill_s,
                "t_first_token_s": self.t_first_token_s, "t_draft_s": self.t_draft_s, "t_verify_s": self.t_verify_s,
                "t_ar_s": self.t_ar_s, "t_total_s": self.t_total_s}


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOG token or stop string/token), "length", or "cancelled" (_Stream.cancel)
    stats: GenerationStats


@dataclass
class _Chunk:
    """What the decode loop yields: newly committed tokens and whether generation ended."""
    tokens: list[int]
    finish_reason: str | None


class Orthrus:
    """Orthrus parallel decoding on a GGUF model (+ an adapter-only GGUF, unless the model is a merged file).

    >>> llm = Orthrus("SmolLM2-135M-Instruct.Q4_1.gguf", adapter_path="smollm2-orthrus.gguf")
    >>> out = llm.generate("The capital of France is", max_tokens=32)
    >>> out.text, out.stats.tokens_per_cycle

    block_size: K (2 ... trained K; default trained K), or "auto": per round, the K with the best expected tokens
    per second from the measured pass costs and the acceptance seen so far, or a plain AR step when that is faster.
    system_prompt: the system message chat_prompt() puts first when the messages have none (None: the chat
    template's own default, if it has one).
    """

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, *,
                 block_size: int | str | None = None, mode: str = "orthrus", n_ctx: int = 2048,
                 n_threads: int | None = None, n_gpu_layers: int = 0, flash_attn: bool = False, seed: int = 0,
                 strict: bool | None = None, fused: bool | None = None, system_prompt: str | None = None,
                 verbose: bool = False, **llama_kwargs):
        import llama_cpp

        from . import _lib

        if mode not in MODES:
            raise PyorthrusError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        for label, path in (("model", model_path), ("adapter", adapter_path)):
            if path is not None and not Path(path).is_file():
                raise PyorthrusError(f"{path}: {label} file not found")
        self._lib = _lib
        self._lock = threading.Lock()
        self._owner = True  # False for ar_view(): it shares this instance's model, context and adapter
        self.mode = mode
        self.seed = seed
        # fused cycles (verify block n and draft block n+1 in one pass): True for every cycle, None where
        # block_size="auto" finds that they pay, False never
        self.fused = fused
        self.system_prompt = system_prompt  # chat_prompt's system message where the messages bring none
        self.adapter = None
        self.auto_controller = None  # block_size="auto": created (pass costs measured) on first use
        # strict (batch-invariant) by default when every layer runs on the CPU
        self.strict = n_gpu_layers == 0 if strict is None else strict
        errors: list[str] = []
        try:
            with _strict_cpu_model_params() if self.strict else contextlib.nullcontext(), load_errors_kept(errors):
                self.llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads,
                                           n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, seed=seed,
                                           verbose=verbose, **llama_kwargs)
        except ValueError as exc:
            raise PyorthrusError(f"{model_path}: llama.cpp could not load it ({errors[0] if errors else exc})") \
                from exc
        self.ctx = self.llm.ctx  # the llama_context, as llama_cpp.Llama.ctx (passes, cache edits, orthrus calls)
        model = self.llm.model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        if adapter_path is not None:
            self.adapter = _lib.llama_orthrus_adapter_init(model, str(adapter_path).encode())
            if not self.adapter:
                reason = (_lib.last_error() or "not a valid Orthrus adapter").removeprefix(f"adapter '{adapter_path}': ")
                self.close()
                raise PyorthrusError(f"{adapter_path} on {model_path}: {reason}")
            _lib.llama_orthrus_set_adapter(self.ctx, self.adapter)
            trained_k = _lib.llama_orthrus_adapter_block_size(self.adapter)
        else:
            trained_k = _lib.llama_orthrus_model_block_size(model) if _lib.llama_orthrus_model_has_diff(model) else 0
        if mode == "orthrus" and trained_k == 0:
            raise PyorthrusError(f"{model_path}: has no Orthrus diffusion weights; pass adapter_path= (an adapter "
                                 "GGUF) or use mode='ar'")
        self.trained_block_size = trained_k
        self.block_size = self.check_block_size(block_size or trained_k)
        if mode == "orthrus":
            _warn_low_precision_diff(adapter_path or model_path)

    def check_block_size(self, block_size: int | str, fused: bool | None = None) -> int | str:
        """block_size (an integer K or "auto") if this model can run it, fused or not; else a PyorthrusError that
        says why (outside 2 ... trained K, or K (2K fused) above n_batch)."""
        if block_size == AUTO:
            largest = self.trained_block_size
        elif isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
            block_size = largest = int(block_size)
            if self.mode == "orthrus" and not 2 <= block_size <= self.trained_block_size:
                raise PyorthrusError(f"block_size {block_size} out of range: 2 ... {self.trained_block_size} "
                                     "(trained K)")
        else:
            raise PyorthrusError(f"block_size {block_size!r}: give an integer K or 'auto'")
        if fused is None:
            fused = self.fused or (self.fused is None and block_size == AUTO)
        if (2 if fused else 1) * largest > self.llm.n_batch:
            raise PyorthrusError(f"block_size {largest} exceeds n_batch {self.llm.n_batch}"
                                 + (" / 2 (fused cycles decode 2K tokens)" if fused else ""))
        return block_size

    def round_cells(self, block_size: int | str | None = None, fused: bool | None = None) -> int:
        """The most cache cells a decode round may hold beyond the committed tokens: K, or 2K for a fused pass
        (which caches the next draft block too); for "auto" those of the trained K."""
        block_size = self.block_size if block_size is None else block_size
        largest = self.trained_block_size if block_size == AUTO else block_size
        fused = bool(self.fused) if fused is None else fused
        return largest * (2 if fused or (block_size == AUTO and self.fused is not False) else 1)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def ar_view(self) -> "Orthrus":
        """The same model, context and build decoding one token per step: what Orthrus must reproduce."""
        view = copy.copy(self)
        view.mode, view._owner = "ar", False
        return view

    def close(self) -> None:
        """Free the adapter (which detaches it from the context), then the model."""
        if not getattr(self, "_owner", False):
            return
        if getattr(self, "adapter", None):
            self._lib.llama_orthrus_adapter_free(self.adapter)
            self.adapter = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> "Orthrus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- tokens ----------------------------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        import llama_cpp

        return self.llm.tokenize(text.encode(), add_bos=llama_cpp.llama_vocab_get_add_bos(self._vocab), special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- the decode loops ------------------------------------------------------------------------------------------
    def prefill(self, prompt: list[int]) -> None:
        """Clear the cache and decode all but the last prompt token: the last one is x_s, known but not cached."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        head = prompt[:-1]
        for start in range(0, len(head), self.llm.n_batch):
            chunk = head[start:start + self.llm.n_batch]
            ids = (llama_cpp.llama_token * len(chunk))(*chunk)  # the batch only points at it: keep it alive
            batch = llama_cpp.llama_batch_get_one(ids, len(chunk))
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise PyorthrusError("llama_decode failed on the prompt")

    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """AR logits for the token after `tokens` (one-token decode of the last one, as AR generation does)."""
        with self._lock:
            self.prefill(list(tokens))
            return self._decode_one(tokens[-1]).copy()

    def _decode_one(self, token: int) -> np.ndarray:
        """Decode one token at the next position; a view of its logits (valid until the next decode)."""
        import llama_cpp

        ids = (llama_cpp.llama_token * 1)(token)
        batch = llama_cpp.llama_batch_get_one(ids, 1)
        if llama_cpp.llama_decode(self.ctx, batch) != 0:
            raise PyorthrusError("llama_decode failed")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.llm.n_vocab(),))

    def _orthrus_cycle(self, last, block_size, params, out, n_max, cycle, stats) -> tuple[list[int], bool]:
        lib = self._lib
        params.block_size = block_size
        n = lib.llama_orthrus_cycle(self.ctx, 0, last, ctypes.byref(params), out, n_max, ctypes.byref(cycle))
        if n < 0:
            raise PyorthrusError(f"llama_orthrus_cycle failed: {lib.last_error()}")
        stats.n_cycles += 1
        stats.n_passes += cycle.n_passes
        stats.n_carried += cycle.carried
        stats.cycles.append((block_size, n))
        stats.accepted[cycle.n_accepted] += 1
        stats.t_draft_s += cycle.t_draft_us / 1e6
        stats.t_verify_s += cycle.t_verify_us / 1e6
        return list(out[:n]), bool(cycle.stopped)

    def _ar_step(self, last, params, out, step) -> tuple[list[int], bool]:
        lib = self._lib
        if lib.llama_orthrus_step(self.ctx, 0, last, ctypes.byref(params), out, ctypes.byref(step)) != 1:
            raise PyorthrusError(f"llama_orthrus_step failed: {lib.last_error()}")
        return [out[0]], bool(step.stopped)

    def _decode_rounds(self, prompt, max_tokens, block_size, fused, params, stop_tokens, stats) -> Iterator[_Chunk]:
        """One chunk per round: an Orthrus cycle at block_size, or a plain AR step (mode "ar", or when the auto
        controller says so), both in C. Both leave the cache at the convention of llama_orthrus_cycle (the newest
        committed token known but not cached), so either may follow the other. A greedy generation runs in argmax
        mode throughout (each pass returns its rows' argmax, not their logits), so steps and cycles never switch
        it and rebuild their graphs."""
        lib, auto = self._lib, self.auto_controller if block_size == AUTO else None
        stop_array = (lib.llama_token * max(1, len(stop_tokens)))(*stop_tokens)
        params.stop_tokens, params.n_stop_tokens = stop_array, len(stop_tokens)
        out = (lib.llama_token * max(1, self.trained_block_size))()
        cycle = lib.llama_orthrus_stats()
        lib.llama_orthrus_set_argmax(self.ctx, params.temperature <= 0)
        try:
            yield from self._rounds(prompt[-1], max_tokens, block_size, fused, auto, params, out, cycle, stats)
        finally:
            lib.llama_orthrus_set_argmax(self.ctx, False)

    def _rounds(self, last, max_tokens, block_size, fused, auto, params, out, cycle, stats) -> Iterator[_Chunk]:
        produced = 0
        while produced < max_tokens:
            k = 1 if self.mode == "ar" else auto.choose(max_tokens - produced) if auto else block_size
            start = time.perf_counter()
            if k == 1:
                tokens, stopped = self._ar_step(last, params, out, cycle)
                stats.n_passes += 1
                elapsed = time.perf_counter() - start
                stats.t_ar_s += elapsed
                if auto:
                    stats.n_ar_steps += 1
                    auto.observe_step(elapsed)
                else:
                    stats.n_cycles += 1
            else:
                params.fused = auto.next_fused if auto else fused
                tokens, stopped = self._orthrus_cycle(last, k, params, out, min(k, max_tokens - produced), cycle,
                                                      stats)
                if auto:
                    auto.observe_cycle(k, cycle.n_accepted, time.perf_counter() - start, cycle.fused, cycle.carried)
            produced += len(tokens)
            last = tokens[-1]
            if stopped:
                yield _Chunk(tokens, "stop")
                return
            yield _Chunk(tokens, "length" if produced >= max_tokens else None)

    def _chunks(self, prompt: list[int], max_tokens: int, block_size: int | str, fused: bool, temperature: float,
                top_k: int,
                top_p: float, min_p: float, stop_tokens: Sequence[int], seed: int,
                stats: GenerationStats) -> Iterator[_Chunk]:
        if not prompt:
            raise PyorthrusError("empty prompt")
        largest = self.round_cells(block_size, fused)
        if len(prompt) + max_tokens + largest > self.llm.n_ctx():
            raise PyorthrusError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) + the cells of one "
                                 f"decode round ({largest}) exceeds n_ctx ({self.llm.n_ctx()})")
        if block_size == AUTO and self.mode == "orthrus" and self.auto_controller is None:
            from .auto import AutoBlockSize
            from .bench.pass_costs import auto_sizes, measure_pass_costs

            start = time.perf_counter()
            may_fuse = self.fused is not False
            costs = measure_pass_costs(self, auto_sizes(self.trained_block_size, may_fuse), statistic=min)
            self.auto_controller = AutoBlockSize(costs, self.trained_block_size, may_fuse)
            stats.t_profile_s = time.perf_counter() - start
        start = time.perf_counter()
        self.prefill(prompt)
        stats.t_prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        params = self._lib.llama_orthrus_default_params()
        params.temperature, params.top_k, params.top_p, params.min_p = temperature, top_k, top_p, min_p
        params.seed = seed
        for chunk in self._decode_rounds(prompt, max_tokens, block_size, fused, params, list(stop_tokens), stats):
            stats.n_generated += len(chunk.tokens)
            stats.t_total_s = time.perf_counter() - start
            if not stats.t_first_token_s:
                stats.t_first_token_s = stats.t_prefill_s + stats.t_total_s
            yield chunk

    # -- public API ------------------------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, stop: Sequence[str] = (),
                 stop_tokens: Sequence[int] = (), stream: bool = False, block_size: int | str | None = None,
                 seed: int | None = None, fused: bool | None = None):
        """Generate a continuation. Returns a `Generation`, or with stream=True an iterator of text pieces whose
        `.result` is set to the `Generation` once exhausted (its `cancel()` ends the generation at the next decode
        round, from any thread). temperature <= 0 is greedy. block_size overrides the instance's block size (an
        integer K or "auto"), seed its sampling seed and fused its fused setting (fixed K only: "auto" decides per
        cycle) for this call."""
        block = self.block_size if block_size is None and fused is None else \
            self.check_block_size(self.block_size if block_size is None else block_size, fused)
        fused = bool(self.fused) if fused is None else fused
        it = _Stream(self, prompt, max_tokens, block, fused, temperature, top_k, top_p, min_p, list(stop),
                     list(stop_tokens), self.seed if seed is None else seed)
        if stream:
            return it
        for _ in it:
            pass
        return it.result

    def create_completion(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                          top_p: float = 1.0, min_p: float = 0.0, stop: Sequence[str] = (), stream: bool = False,
                          seed: int | None = None):
        """OpenAI-style text completion (the shape llama_cpp.Llama returns), or with stream=True its chunks."""
        return self._completion(False, prompt, max_tokens, stream, dict(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, seed=seed))

    def create_chat_completion(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0,
                               top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, stop: Sequence[str] = (),
                               stream: bool = False, seed: int | None = None):
        """OpenAI-style chat completion (the shape llama_cpp.Llama returns), using the GGUF's chat template."""
        return self._completion(True, self.chat_prompt(messages), max_tokens, stream, dict(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, seed=seed))

    def _completion(self, chat: bool, prompt: str, max_tokens: int, stream: bool, options: dict):
        from .completions import Completion

        completion = Completion(chat, self.llm.model_path)
        pieces = self.generate(prompt, max_tokens=max_tokens, stream=True, **options)
        if stream:
            return completion.chunks(pieces)
        text = "".join(pieces)
        return completion.whole(text, pieces.result)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text the GGUF's chat template makes of `messages` (generation prompt appended), with the
        instance's system_prompt first unless the messages start with a system message."""
        if self.system_prompt is not None and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return chat_template_prompt(self.llm, messages)


def chat_template_prompt(llm, messages: list[dict]) -> str:
    """The prompt text the chat template of a llama_cpp.Llama's GGUF makes of messages, generation prompt appended."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise PyorthrusError(f"{llm.model_path}: no chat template in the GGUF")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def text(token: int) -> str:
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace") if token >= 0 else ""

    formatter = Jinja2ChatFormatter(template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()),
                                    add_generation_prompt=True)
    return formatter(messages=messages).prompt


def _warn_low_precision_diff(path) -> None:
    """Warn when the file holding the diff weights stores them below Q8_0 (e.g. a merged file quantized to Q4_K_M
    as a whole): the drafts may then be accepted less often (little on our 135M adapter, far less on 8B models by
    public reports), which no error would reveal."""
    from .inspect import low_precision_diff_tensors, open_reader

    low = low_precision_diff_tensors(open_reader(path))
    if low:
        warnings.warn(f"{path}: {sum(low.values())} diff weight matrices are stored below Q8_0 ("
                      + ", ".join(f"{n} {t}" for t, n in low.items()) + "); drafts may be accepted less often "
                      "(quantize the diff tensors to Q8_0 or better, e.g. `pyorthrus convert --outtype q8_0`)",
                      stacklevel=3)


class _Stream:
    """Iterator of text pieces; holds back text that could still become a stop string."""

    def __init__(self, owner: Orthrus, prompt, max_tokens, block_size, fused, temperature, top_k, top_p, min_p, stop,
                 stop_tokens, seed):
        self.owner, self.stop, self.block_size = owner, [s for s in stop if s], block_size
        self.prompt = owner.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.args = (max_tokens, block_size, fused, temperature, top_k, top_p, min_p, stop_tokens, seed)
        self.result: Generation | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """End the generation after the decode round in progress (finish_reason "cancelled")."""
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        owner = self.owner
        stats = GenerationStats(owner.mode, self.block_size if owner.mode == "orthrus" else 1,
                                n_prompt=len(self.prompt))
        tokens: list[int] = []
        # Text grows by each chunk's bytes (a token's text is its own piece, so this is detokenize(all tokens)); the
        # decoder keeps a character split across chunks until its last byte comes, and only the new text's
        # neighbourhood is searched for stop strings: a long generation costs linear time, not quadratic.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        longest_stop = max(map(len, self.stop), default=0)
        emitted = 0  # characters of text already yielded
        text, finish = "", "length"
        with owner._lock:
            for chunk in owner._chunks(self.prompt, *self.args, stats):
                tokens += chunk.tokens
                searched = max(0, len(text) - longest_stop + 1)  # a stop string may begin in the old text's tail
                text += decoder.decode(owner.llm.detokenize([t for t in chunk.tokens if not owner._is_eog(t)]))
                cut = min((i for i in (text.find(s, searched) for s in self.stop) if i >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                elif chunk.finish_reason:
                    finish = chunk.finish_reason
                if self.cancelled:
                    finish = "cancelled"
                done = cut >= 0 or chunk.finish_reason is not None or self.cancelled
                if done and cut < 0:
                    text += decoder.decode(b"", final=True)  # an unfinished character at the very end: U+FFFD
                # Hold back a tail that is a prefix of a stop string.
                safe = len(text) if done else len(text) - _held_back(text, self.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if done:
                    break
        self.result = Generation(text=text, tokens=tokens, finish_reason=finish, stats=stats)


def _held_back(text: str, stops: list[str]) -> int:
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold
