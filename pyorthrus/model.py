"""`pyorthrus.Orthrus`: a llama_cpp.Llama whose generation runs Orthrus draft/verify cycles in C.

The wrapped `llama_cpp.Llama` supplies the model, context, tokenizer and chat template; this class adds the
adapter, the options and the OpenAI-style API. The passes run in pyorthrus.engine (one `llama_orthrus_cycle` call
per cycle), text comes out through pyorthrus.streaming, the counters are pyorthrus.stats. `mode="ar"` runs the very
same model and context one token per step, which is what Orthrus output is compared against. `block_size="auto"`
chooses the block size, or a plain AR step, before every round (pyorthrus.auto).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import numbers
import re
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import options
from .engine import Chunk, DecodeEngine
from .errors import PyorthrusError
from .gguf_meta import readable_gguf, state_snapshots_needed, weight_types
from .llama_defaults import overridden
from .options import OptionError
from .stats import GenerationStats
from .streaming import GenerationRequest, Session, TextStream
from .strict import REPACKED_TYPES, non_strict_load, repack_is_strict, strict_model_loads

MODES = ("orthrus", "ar")
AUTO = "auto"

# ggml.h of the pinned llama.cpp (llama-cpp-python's own table predates it)
GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR = 3, 4


def default_threads() -> int:
    """The CPU threads a model gets when none are asked for: every CPU this process may run on, for one-token steps
    and multi-token passes alike. (llama-cpp-python's own default gives steps half the CPUs and batches all of them,
    which on a 2-core machine made AR steps run on one core while Orthrus passes ran on two: an unfair comparison.)"""
    return options.usable_cpus()


def quiet_llama_warnings() -> None:
    """Keep llama.cpp's warnings off the terminal unless verbose (e.g. "~llama_context: CPU compute buffer size ...
    does not match expectation", logged when a context whose graphs grew is freed). llama-cpp-python's table of
    llama.cpp log levels predates the pinned ggml.h, where 3 is WARN: it files them as errors, which it prints even
    when not verbose. Errors stay as they are (pyorthrus reports them in one line of its own)."""
    import logging

    from llama_cpp import _logger

    _logger.GGML_LOG_LEVEL_TO_LOGGING_LEVEL[GGML_LOG_LEVEL_WARN] = logging.WARNING


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


class Orthrus:
    """Orthrus parallel decoding on a GGUF model (+ an adapter-only GGUF, unless the model is a merged file).

    >>> llm = Orthrus("SmolLM2-135M-Instruct.Q4_1.gguf", adapter_path="smollm2-orthrus.gguf")
    >>> out = llm.generate("The capital of France is", max_tokens=32)
    >>> out.text, out.stats.tokens_per_cycle

    block_size: K (2 ... trained K; default trained K), or "auto": per round, the K with the best expected tokens
    per second from the measured pass costs and the acceptance seen so far, or a plain AR step when that is faster.
    On a model with recurrent layers (Qwen3.5/3.6) a fixed K also bounds the memory: the context keeps K state
    snapshots of those layers (each as large as their whole state), and generate() may then ask for K or less.
    tree: tree verify, nodes per verify pass besides the root. Each cycle verifies the `tree` best continuations of
    the draft (best-first over its per-position probabilities) in one AR pass of tree + 1 tokens and commits the
    longest path the AR model agrees with: more tokens per pass than the argmax chain, output unchanged. With a
    fixed K: None or 0 runs chains, N trees of N nodes (not with fused cycles). With block_size "auto": the budgets
    it may choose per round besides chains and AR steps: None = 8, 16 and 32, 0 = none, N = N only.
    system_prompt: the system message chat_prompt() puts first when the messages have none (None: the chat
    template's own default, if it has one).
    """

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, *,
                 block_size: int | str | None = None, mode: str = "orthrus", n_ctx: int = 2048,
                 n_threads: int | None = None, n_gpu_layers: int = 0, flash_attn: bool = True, seed: int = 0,
                 strict: bool | None = None, fused: bool | None = None, system_prompt: str | None = None,
                 tree: int | None = None, reprofile: bool = False, verbose: bool = False, **llama_kwargs):
        import llama_cpp

        from . import _lib

        # the generation session (lock, the stream decoding now, closed or not), shared with every ar_view()
        self.session = Session()
        self._owner = True  # False for ar_view(): it shares this instance's model, context and adapter
        self.llm = None
        self.adapter = None
        if mode not in MODES:
            raise PyorthrusError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        options.check_n_ctx(n_ctx)
        options.check_threads(n_threads)
        options.check_sampling(seed=seed)
        for label, path in (("model", model_path), ("adapter", adapter_path)):
            if path is not None and Path(path).is_dir():
                raise PyorthrusError(f"{path}: {label} file is a directory, not a GGUF file")
            if path is not None and not Path(path).is_file():
                raise PyorthrusError(f"{path}: {label} file not found")
        self._lib = _lib
        self.mode = mode
        self.seed = seed
        # fused cycles (verify block n and draft block n+1 in one pass): True for every cycle, None where
        # block_size="auto" finds that they pay, False never
        self.fused = fused
        self.system_prompt = system_prompt  # chat_prompt's system message where the messages bring none
        self.reprofile = reprofile  # block_size="auto": measure the pass costs again instead of reading them
        self.auto_controller = None  # block_size="auto": created (pass costs measured or read) on first use
        # strict (batch-invariant) by default when every layer runs on the CPU
        self.strict = n_gpu_layers == 0 if strict is None else strict
        self.model_path, self.adapter_path = model_path, adapter_path
        # one count for steps and passes (-t sets both): fixed K-token passes must not get more cores than the AR
        # steps they are compared with
        n_threads = n_threads or default_threads()
        # what shapes a pass's cost besides the files and the build (the profile cache's key, pyorthrus.profiles)
        self.pass_settings = dict(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                  flash_attn=flash_attn, strict=self.strict, fused=fused,
                                  **{k: v for k, v in llama_kwargs.items() if k.startswith("n_")})
        errors: list[str] = []
        quiet_llama_warnings()
        try:
            # strict: repacked weights only where every repacked type keeps passes batch-invariant (a file gguf-py
            # cannot read counts as holding every repackable type: no repacking, and llama.cpp says what is wrong)
            model_file = readable_gguf(model_path)
            repack = self.strict and repack_is_strict(weight_types(model_file) or REPACKED_TYPES)
            if not self.strict:
                non_strict_load()
            # recurrent layers give a draft block back through per-token state snapshots (patch 0021), K of them
            # for the trained K, or for a smaller fixed block size asked for here: each costs the whole recurrent
            # state, so the block size bounds that memory
            snapshots = state_snapshots_needed(model_file, adapter_path) if mode == "orthrus" else 0
            if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool) and \
                    2 <= block_size < snapshots:
                snapshots = int(block_size)
            # such a model runs chain cycles only (issue 37): fused passes and tree verify decode more than a
            # block, which its state snapshots cannot take back ("auto" weighs chains and AR steps only)
            self.recurrent = snapshots > 0
            if self.recurrent and fused is None:
                self.fused = False
            self.state_snapshots = snapshots
            with strict_model_loads(repack) if self.strict else contextlib.nullcontext(), load_errors_kept(errors), \
                    overridden(context={"n_rs_seq": snapshots} if snapshots else None):
                llama_kwargs["n_threads_batch"] = llama_kwargs.get("n_threads_batch") or n_threads
                self.llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=n_threads,
                                           n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, seed=seed,
                                           verbose=verbose, **llama_kwargs)
        except ValueError as exc:
            raise PyorthrusError(f"{model_path}: llama.cpp could not load it ({errors[0] if errors else exc})") \
                from exc
        self.ctx = self.llm.ctx  # the llama_context, as llama_cpp.Llama.ctx (passes, cache edits, orthrus calls)
        model = self.llm.model
        if adapter_path is not None:
            self.adapter = _lib.llama_adapter_orthrus_init(model, str(adapter_path).encode())
            if not self.adapter:
                reason = (_lib.last_error() or "not a valid Orthrus adapter").removeprefix(f"adapter '{adapter_path}': ")
                self.close()
                raise PyorthrusError(f"{adapter_path} on {model_path}: {reason}")
            _lib.llama_set_adapter_orthrus(self.ctx, self.adapter)
            trained_k = _lib.llama_adapter_orthrus_block_size(self.adapter)
        else:
            trained_k = _lib.llama_model_orthrus_block_size(model) if _lib.llama_model_has_orthrus(model) else 0
        if mode == "orthrus" and trained_k == 0:
            self.close()
            raise PyorthrusError(f"{model_path}: has no Orthrus diffusion weights: give it an Orthrus adapter GGUF, "
                                 "or decode plain AR")
        self.trained_block_size = trained_k
        self.engine = DecodeEngine(self.llm, trained_k)
        try:
            self.block_size = self.check_block_size(trained_k if block_size is None else block_size)
            self.tree = self.check_tree(tree, self.block_size, fused)
        except PyorthrusError:
            self.close()
            raise
        if mode == "orthrus":
            _warn_low_precision_diff(adapter_path or model_path, adapter_path or model_file)

    def check_block_size(self, block_size: int | str, fused: bool | None = None) -> int | str:
        """block_size (an integer K or "auto") if this model can run it, fused or not; else an OptionError that
        says why (outside 2 ... trained K, or K (2K fused) above the context or n_batch). Plain AR (mode "ar")
        runs one token per step whatever the block size."""
        if block_size == AUTO:
            largest = self.trained_block_size
        elif isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
            block_size = largest = int(block_size)
            if self.mode == "orthrus" and not 2 <= block_size <= self.trained_block_size:
                raise OptionError("block_size", block_size, f"must be in 2 ... {self.trained_block_size} (the "
                                  "trained K), or 'auto'")
        else:
            raise OptionError("block_size", block_size, "must be an integer K or 'auto'")
        if self.mode == "ar":
            return block_size
        if fused is None:
            fused = self.fused or (self.fused is None and block_size == AUTO)
        if self.recurrent and fused:
            raise OptionError("fused", True, "not on a model with recurrent layers yet: a fused pass decodes two "
                              "blocks, and their state snapshots take one back")
        if self.recurrent and block_size != AUTO and block_size > self.state_snapshots:
            raise OptionError("block_size", block_size, f"this model was opened with block size "
                              f"{self.state_snapshots}, so its recurrent layers keep {self.state_snapshots} state "
                              f"snapshots: open it with block size {block_size} or more")
        needed = (2 if fused else 1) * largest
        n_ctx = self.pass_settings["n_ctx"] or self.llm.n_ctx()  # as asked: llama.cpp may pad it, not n_batch
        if needed > n_ctx:
            raise OptionError("n_ctx", n_ctx, f"too small for block size {largest}: a decode round needs "
                              f"{needed} tokens of context{' (fused cycles decode 2K)' if fused else ''}; give a "
                              "larger context or a smaller block size")
        if needed > self.llm.n_batch:
            raise OptionError("block_size", largest, f"a decode round of {needed} tokens exceeds n_batch "
                              f"{self.llm.n_batch}" + (" (fused cycles decode 2K tokens)" if fused else ""))
        return block_size

    def check_tree(self, tree: int | None, block_size: int | str, fused: bool | None) -> int | None:
        """tree (nodes verified per pass besides the root; 0: chains; None: the default, see the class) if this
        model can run it with block_size and fused; else an OptionError that says why."""
        if tree is None:
            return None
        if not isinstance(tree, numbers.Integral) or isinstance(tree, bool) or tree < 0:
            raise OptionError("tree", tree, "must be an integer >= 0 (0: verify the draft's argmax chain)")
        tree = int(tree)
        if tree == 0 or self.mode == "ar":
            return tree
        if self.recurrent:
            raise OptionError("tree", tree, "tree verify needs a plain KV cache: not on a model with recurrent "
                              "layers")
        if fused and block_size != AUTO:
            raise OptionError("tree", tree, "tree cycles are not fused: drop fused")
        if tree + 1 > self.llm.n_batch:
            raise OptionError("tree", tree, f"a tree pass of {tree + 1} tokens exceeds n_batch {self.llm.n_batch}")
        return tree

    def round_cells(self, block_size: int | str | None = None, fused: bool | None = None,
                    tree: int | None = None) -> int:
        """The most cache cells a decode round may hold beyond the committed tokens: K, or 2K for a fused pass
        (which caches the next draft block too), or tree + 1 for a tree pass; for "auto" those of the trained K;
        1 in mode "ar"."""
        if self.mode == "ar":
            return 1
        block_size = self.block_size if block_size is None else block_size
        largest = self.trained_block_size if block_size == AUTO else block_size
        fused = bool(self.fused) if fused is None else fused
        trees = self.auto_trees() if block_size == AUTO else [self.tree if tree is None else tree]
        return max([largest * (2 if fused or (block_size == AUTO and self.fused is not False) else 1),
                    *(b + 1 for b in trees if b)])

    def auto_trees(self) -> tuple[int, ...]:
        """The tree budgets block_size "auto" weighs (see the class's tree), those that fit one batch."""
        from .auto import AUTO_TREES

        if self.recurrent:  # tree verify needs a plain KV cache
            return ()
        budgets = AUTO_TREES if self.tree is None else (self.tree,) if self.tree else ()
        return tuple(b for b in budgets if b + 1 <= self.llm.n_batch)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def ar_view(self) -> "Orthrus":
        """The same model, context and build decoding one token per step: what Orthrus must reproduce. The view keeps
        its owner alive; once the owner is closed, the view refuses to decode."""
        view = copy.copy(self)
        view.mode, view._owner = "ar", False
        view._parent = self  # the model and context are the owner's: a view must not outlive them
        return view

    @property
    def closed(self) -> bool:
        return self.session.closed

    def close(self) -> None:
        """Cancel the generation in progress (waiting for its decode round to end, from any thread), then free the
        adapter (which detaches it from the context) and the model. Every later call raises a PyorthrusError.
        A view's close() does nothing: its owner's frees the model."""
        session = getattr(self, "session", None)
        if session is None or not self._owner:
            return
        with session.lock:  # the round in progress, on whatever thread, ends first
            if session.closed:
                return
            session.close()
            if self.adapter:
                self._lib.llama_adapter_orthrus_free(self.adapter)
                self.adapter = None
            if self.llm is not None:
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

    def _check_open(self) -> None:
        if self.session.closed:
            raise PyorthrusError("this Orthrus model is closed")

    # -- tokens ----------------------------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        import llama_cpp

        self._check_open()
        add_bos = llama_cpp.llama_vocab_get_add_bos(self.engine.vocab)
        return self.llm.tokenize(options.utf8_text("text", text).encode(), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._check_open()
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    # -- decoding --------------------------------------------------------------------------------------------------
    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """AR logits for the token after `tokens` (one-token decode of the last one, as AR generation does)."""
        with self.session.exclusive(self):
            self.engine.prefill(list(tokens))
            return self.engine.decode_one(tokens[-1]).copy()

    def decode_rounds(self, request: GenerationRequest, stats: GenerationStats) -> Iterator[Chunk]:
        """Prefill a generation (reusing the cached prefix) after checking it fits, then return its decode rounds,
        each to be run by the caller under the session lock (TextStream does), with the totals of stats kept
        current. With block size auto, the controller is made first (pass costs read from the profile cache, or
        measured). Called under the session lock."""
        prompt, block_size = request.prompt, request.block_size
        if not prompt:
            raise PyorthrusError("empty prompt")
        largest = self.round_cells(block_size, request.fused, request.cycle_params["tree_nodes"])
        if len(prompt) + request.max_tokens + largest > self.llm.n_ctx():
            raise PyorthrusError(f"prompt ({len(prompt)} tokens) + max_tokens ({request.max_tokens}) + the cells of "
                                 f"one decode round ({largest}) exceeds the context ({self.llm.n_ctx()} tokens): "
                                 "give a larger context or fewer tokens")
        auto = block_size == AUTO and self.mode == "orthrus"
        if auto and self.auto_controller is None:
            from .auto import AutoBlockSize
            from .pass_costs import auto_sizes
            from .profiles import pass_costs

            start = time.perf_counter()
            may_fuse = self.fused is not False
            trees = self.auto_trees()
            costs = pass_costs(self, auto_sizes(self.trained_block_size, may_fuse, max(trees, default=-1) + 1),
                               self.reprofile)
            self.engine.forget()  # measuring decoded passes of its own
            self.auto_controller = AutoBlockSize(costs, self.trained_block_size, may_fuse, trees)
            stats.t_profile_s = time.perf_counter() - start
        if auto:
            stats.auto_note = self.auto_controller.cost_note()
        start = time.perf_counter()
        stats.n_reused = self.engine.prefill(prompt, reuse=True)
        stats.t_prefill_s = time.perf_counter() - start
        return self._rounds(request, stats)

    def _rounds(self, request: GenerationRequest, stats: GenerationStats) -> Iterator[Chunk]:
        start = time.perf_counter()
        params = self._lib.llama_orthrus_default_params()
        for name, value in request.cycle_params.items():
            setattr(params, name, value)
        stats.tree = params.tree_nodes if self.mode == "orthrus" else 0  # auto: 0 (its trees vary per round)
        if self.mode == "ar":
            block_size, auto = 1, None
        else:
            block_size = request.block_size
            auto = self.auto_controller if block_size == AUTO else None
        for chunk in self.engine.rounds(request.prompt, request.max_tokens, block_size, request.fused, auto, params,
                                        request.stop_tokens, stats):
            stats.n_generated += len(chunk.tokens)
            stats.t_total_s = time.perf_counter() - start
            if not stats.t_first_token_s:
                stats.t_first_token_s = stats.t_prefill_s + stats.t_total_s
            yield chunk

    # -- public API ------------------------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, stop: Sequence[str] = (),
                 stop_tokens: Sequence[int] = (), stream: bool = False, block_size: int | str | None = None,
                 seed: int | None = None, fused: bool | None = None, tree: int | None = None):
        """Generate a continuation. Returns a `Generation`, or with stream=True an iterator of text pieces whose
        `.result` is set to the `Generation` once exhausted (its `cancel()` ends the generation at the next decode
        round, from any thread). temperature <= 0 is greedy. block_size overrides the instance's block size (an
        integer K or "auto"), seed its sampling seed, fused its fused setting (fixed K only: "auto" decides per
        cycle) and tree its tree verify (nodes per verify pass besides the root; 0: chains) for this call.

        One generation decodes at a time per model (and its ar_views): a generation on another thread waits for
        the one in progress; a new one on the thread of an unfinished stream cancels that stream (it was left
        unfinished, or is being read in turns with the new one: either way it cannot go on with the context the
        new one takes over), whose next read ends it with finish_reason "cancelled". The cache keeps the tokens a
        generation leaves, and the next decodes only what its prompt does not share with them."""
        self._check_open()
        seed = self.seed if seed is None else seed
        options.check_max_tokens(max_tokens)
        options.check_sampling(temperature, top_k, top_p, min_p, seed)
        block = self.block_size if block_size is None and fused is None else \
            self.check_block_size(self.block_size if block_size is None else block_size, fused)
        if block == AUTO and tree is not None:
            raise OptionError("tree", tree, "with block_size 'auto' the tree budgets are the model's (give "
                              "Orthrus(tree=...))")
        tree = self.tree if tree is None and block_size is None and fused is None else \
            self.check_tree(self.tree if tree is None else tree, block, fused)
        fused = bool(self.fused) if fused is None else fused
        # the llama_orthrus_params fields of this generation; strict builds re-lay an off-chain tree path so the
        # cache stays bit-identical to AR (one more pass in those cycles)
        cycle_params = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                            tree_nodes=0 if block == AUTO else tree or 0, tree_relayout=self.strict)
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        it = TextStream(self, GenerationRequest(tokens, max_tokens, block, fused, cycle_params, list(stop),
                                                list(stop_tokens)))
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
        self._check_open()
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


def _warn_low_precision_diff(path, file) -> None:
    """Warn when the file holding the diff weights (`file`: its path or open reader) stores them below Q8_0 (e.g. a
    merged file quantized to Q4_K_M as a whole): the drafts may then be accepted less often (little on our 135M
    adapter, far less on 8B models by public reports), which no error would reveal."""
    from .gguf_meta import low_precision_diff_tensors, open_reader

    low = low_precision_diff_tensors(open_reader(file))
    if low:
        warnings.warn(f"{path}: {sum(low.values())} diff weight matrices are stored below Q8_0 ("
                      + ", ".join(f"{n} {t}" for t, n in low.items()) + "); drafts may be accepted less often "
                      "(quantize the diff tensors to Q8_0 or better, e.g. `pyorthrus convert --outtype q8_0`)",
                      stacklevel=3)
