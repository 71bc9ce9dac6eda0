"""Small harness over llama-cpp-python's _internals (LlamaModel, LlamaContext, LlamaBatch) and pyorthrus._lib,
shared by the tests and bench/fidelity.py: load a model, make contexts, decode batches, run greedy AR and
greedy/sampled Orthrus.

Everything runs in the batch-invariant CPU configuration (use_extra_bufts=False; the build is expected to use
-DGGML_LLAMAFILE=OFF; K-quants also need GGML_CPU_TILED_MM=0: a process using this harness calls
pyorthrus.testing.process.configure() before it imports llama_cpp, as tests/conftest.py does).
PYORTHRUS_TEST_N_GPU_LAYERS (default 0; -1 offloads every layer) runs the same code on a GPU build instead
(bench/gpu_suite.sh): GPU kernels are not batch-invariant, so only tolerance-based checks are meant to hold there.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

import llama_cpp.llama_cpp as L
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel

from pyorthrus import _lib as O
from pyorthrus.engine import fill_batch

_initialised = False


def init_backend() -> None:
    global _initialised
    if _initialised:
        return
    # llama.cpp's messages go through llama-cpp-python's log callback (installed by `import llama_cpp`, shared by
    # the whole process); quiet it the way llama_cpp.Llama(verbose=False) does rather than install a callback of
    # our own, which would outlive this harness and print into every later test's captured stderr.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    L.llama_backend_init()
    _initialised = True


def default_n_gpu_layers() -> int:
    return int(os.environ.get("PYORTHRUS_TEST_N_GPU_LAYERS", "0"))


class Model:
    def __init__(self, path, *, use_extra_bufts: bool = False, n_gpu_layers: Optional[int] = None):
        init_backend()
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = use_extra_bufts
        mp.n_gpu_layers = default_n_gpu_layers() if n_gpu_layers is None else n_gpu_layers
        self.path = str(path)
        self.loaded = LlamaModel(path_model=self.path, params=mp, verbose=False)  # frees the model on close
        self.ptr = self.loaded.model
        self.vocab = self.loaded.vocab
        # recurrent layers keep one state per sequence, not a cell per position (hybrid models: both)
        self.recurrent = bool(L.llama_model_is_recurrent(self.ptr) or L.llama_model_is_hybrid(self.ptr))
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        raw = text.encode()
        buf = (L.llama_token * (len(raw) + 16))()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_special, True)
        assert n >= 0
        return list(buf[:n])

    def chat_prompt(self, user: str) -> List[int]:
        return self.tokenize(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")

    def is_eog(self, t: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, t))

    def load_adapter(self, path) -> Optional[int]:
        return O.llama_adapter_orthrus_init(self.ptr, str(path).encode())

    def close(self):
        self.loaded.close()  # its contexts first
        self.ptr = None


class Context:
    def __init__(self, model: Model, *, n_ctx: int = 512, n_batch: int = 512, n_ubatch: Optional[int] = None,
                 flash_attn: bool = False, n_threads: int = 2, kv_f32: bool = False, n_rs_seq: int = 0):
        self.model = model
        self.flash_attn = flash_attn
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_ubatch or n_batch
        cp.n_seq_max = 1
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        cp.n_rs_seq = n_rs_seq  # recurrent layers: state snapshots kept per sequence for rollbacks (seq_rm)
        if kv_f32:
            cp.type_k = 0  # GGML_TYPE_F32 (default F16)
            cp.type_v = 0
        self.context = LlamaContext(model=model.loaded, params=cp, verbose=False)  # freed before its model
        self.ptr, self.mem = self.context.ctx, self.context.memory
        self._batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_batch = n_batch

    def close(self):
        if self.ptr:
            self._batch.close()
            self.context.close()
            self.ptr = None

    # --- cache
    def clear(self):
        L.llama_memory_clear(self.mem, True)

    def pos_max(self, seq: int = 0) -> int:
        return L.llama_memory_seq_pos_max(self.mem, seq)

    def pos_min(self, seq: int = 0) -> int:
        return L.llama_memory_seq_pos_min(self.mem, seq)

    def seq_rm(self, p0: int, p1: int = -1, seq: int = 0) -> bool:
        return L.llama_memory_seq_rm(self.mem, seq, p0, p1)

    # --- decoding
    def decode(self, tokens: Sequence[int], pos0: int, *, all_logits: bool = False, seq: int = 0) -> int:
        last = len(tokens) - 1
        return self.decode_rows([(t, pos0 + i, seq, all_logits or i == last) for i, t in enumerate(tokens)])

    def decode_rows(self, rows: Sequence[tuple[int, int, int, bool]]) -> int:
        """Decode one batch given row by row: (token, position, sequence id, wants logits)."""
        fill_batch(self._batch, rows)
        return L.llama_decode(self.ptr, self._batch.batch)

    def logits(self, i: int) -> np.ndarray:
        p = L.llama_get_logits_ith(self.ptr, i)
        return np.ctypeslib.as_array(p, (self.model.n_vocab,)).copy()

    def logits_rows(self, n: int) -> np.ndarray:
        return np.stack([self.logits(i) for i in range(n)])

    def prefill(self, prompt: Sequence[int]) -> int:
        """Decode all prompt tokens but the last (Orthrus convention); returns the last prompt token."""
        self.clear()
        head = list(prompt[:-1])
        for i in range(0, len(head), self.n_batch):
            rc = self.decode(head[i:i + self.n_batch], i)
            assert rc == 0, rc
        return prompt[-1]


def greedy_ar(ctx: Context, prompt: Sequence[int], n_tokens: int, stop_at_eog: bool = True) -> List[int]:
    """Plain one-token-at-a-time greedy decoding (argmax, lowest id on ties)."""
    last = ctx.prefill(prompt)
    pos = len(prompt) - 1
    out: List[int] = []
    while len(out) < n_tokens:
        rc = ctx.decode([last], pos)
        assert rc == 0, rc
        last = int(np.argmax(ctx.logits(-1)))
        out.append(last)
        pos += 1
        if stop_at_eog and ctx.model.is_eog(last):
            break
    return out


@dataclass
class OrthrusRun:
    tokens: List[int] = field(default_factory=list)
    cycles: int = 0
    accepted: int = 0
    drafted: int = 0
    t_draft_us: int = 0
    t_verify_us: int = 0
    stopped: bool = False
    carried: int = 0  # fused cycles whose draft came from the previous cycle's pass
    offchain: int = 0  # tree cycles whose committed path left the draft's argmax chain
    # per cycle: committed tokens and the cycle's llama_orthrus_stats counters
    per_cycle: List[dict] = field(default_factory=list)


def orthrus_params(**fields):
    """llama_orthrus_default_params() with these fields set."""
    p = O.llama_orthrus_default_params()
    for key, value in fields.items():
        setattr(p, key, value)
    return p


def orthrus_generate(ctx: Context, prompt: Sequence[int], n_tokens: int, *, block_size: int = 0,
                     verify_len: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, seed: int = 0, stop_tokens: Sequence[int] = (),
                     check_cache: bool = True, fused: bool = False, tree: int = 0,
                     after_cycle=None) -> OrthrusRun:
    """Orthrus cycles from the prompt until n_tokens or a stop, checking the cache convention after each;
    after_cycle(tokens so far, that cycle's per_cycle entry) runs after each cycle."""
    last = ctx.prefill(prompt)
    p = O.llama_orthrus_default_params()
    p.block_size = block_size
    p.verify_len = verify_len
    p.temperature = temperature
    p.top_k = top_k
    p.top_p = top_p
    p.min_p = min_p
    p.seed = seed
    p.fused = fused
    p.tree_nodes = tree
    stops = (L.llama_token * max(1, len(stop_tokens)))(*stop_tokens)
    p.stop_tokens = ctypes.cast(stops, L.llama_token_p)
    p.n_stop_tokens = len(stop_tokens)
    out = (L.llama_token * 64)()
    st = O.llama_orthrus_stats()
    run = OrthrusRun()
    while len(run.tokens) < n_tokens:
        n = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, min(64, n_tokens - len(run.tokens)),
                                  ctypes.byref(st))
        if n <= 0:
            raise RuntimeError(O.last_error())
        run.tokens += list(out[:n])
        run.cycles += 1
        run.accepted += st.n_accepted
        run.drafted += st.n_drafted
        run.t_draft_us += st.t_draft_us
        run.t_verify_us += st.t_verify_us
        run.carried += st.carried
        run.offchain += st.n_offchain > 0
        run.per_cycle.append(dict(n=n, accepted=st.n_accepted, passes=st.n_passes, carried=st.carried,
                                  nodes=st.n_tree_nodes, offchain=st.n_offchain, redecoded=st.n_redecoded))
        last = run.tokens[-1]
        if check_cache:
            committed = len(prompt) + len(run.tokens)
            assert ctx.pos_max() == committed - 2, (ctx.pos_max(), committed)
            assert ctx.pos_min() == 0 or committed - 2 < 0 or ctx.model.recurrent
        if after_cycle is not None:
            after_cycle(run.tokens, run.per_cycle[-1])
        if st.stopped:
            run.stopped = True
            break
    return run


