"""Random-weight merged Orthrus GGUFs of real model shapes, for timing only.

A pass costs what the shapes and weight types make it cost, not what the values are, so a 1.7B-8B model that cannot
be downloaded here (or carried to a lent GPU) can be made where it runs: `SHAPES` lists the published configs,
`make_shape_gguf` writes an F16 merged file of that shape with gguf-py (the real Qwen3 tokenizer, or SmolLM2's for
Llama shapes, padded to the vocabulary size as llama.cpp's converter pads), then quantizes it with
`llama_model_quantize`. Files are cached by (shape, type). Every result made from them is "random weights: timing
only": tokens, acceptance and text mean nothing.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .. import options
from ..errors import PyorthrusError
from ..files import atomic_write
from ..formats import FULL_ATTENTION_INTERVAL, KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID, twin_name
from ..paths import default_cache_dir

GIB = 1 << 30


def _io_tensors(shape) -> list[tuple[str, tuple[int, ...]]]:
    """A shape's embedding, output norm and (untied) output matrix, as llama.cpp names them."""
    out = [("token_embd.weight", (shape.vocab, shape.hidden)), ("output_norm.weight", (shape.hidden,))]
    if not shape.tied:
        out.append(("output.weight", (shape.vocab, shape.hidden)))
    return out


def _n_params(tensors: list[tuple[str, tuple[int, ...]]]) -> int:
    return sum(int(np.prod(shape)) for _, shape in tensors)


@dataclass(frozen=True)
class Shape:
    arch: str  # "qwen3" (written as the community merged format, arch "orthrus") or "llama"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    rope_theta: float

    @property
    def gguf_arch(self) -> str:
        return "orthrus" if self.arch == "qwen3" else "llama"

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, numpy shape) of every tensor of the merged file, diff tensors included."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = _io_tensors(self)
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (self.hidden,)), (b + "ffn_norm.weight", (self.hidden,)),
                    (b + "ffn_gate.weight", (self.ffn, self.hidden)), (b + "ffn_up.weight", (self.ffn, self.hidden)),
                    (b + "ffn_down.weight", (self.hidden, self.ffn))]
            for suffix in ("", "_diff"):
                out += [(f"{b}attn_q{suffix}.weight", (q, self.hidden)), (f"{b}attn_k{suffix}.weight", (kv, self.hidden)),
                        (f"{b}attn_v{suffix}.weight", (kv, self.hidden)),
                        (f"{b}attn_output{suffix}.weight", (self.hidden, q))]
                if self.arch == "qwen3":
                    out += [(f"{b}attn_q_norm{suffix}.weight", (self.head_dim,)),
                            (f"{b}attn_k_norm{suffix}.weight", (self.head_dim,))]
        return out

    @property
    def n_params(self) -> int:
        return _n_params(self.tensors())


@dataclass(frozen=True)
class Qwen35Shape:
    """A Qwen3.5 / Qwen3.6 shape (llama.cpp arch `qwen35`, with experts `qwen35moe`): Gated DeltaNet layers, every
    fourth a gated attention layer, laid out as llama.cpp's converter writes it; the defaults are the tests' tiny
    model. Its merged Orthrus file has a twin of each attention projection and q/k norm and of each DeltaNet layer's
    weights; the feed-forward part (dense, or routed experts plus a gated shared expert) stays shared."""

    hidden: int = 64
    layers: int = 4  # full_attention_interval 4: layers 0-2 DeltaNet, 3 attention
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 64
    ffn: int = 128
    state: int = 16  # ssm.state_size: the DeltaNet key/value head size (CUDA's kernel takes 16/32/64/128)
    groups: int = 2  # ssm.group_count: DeltaNet key heads
    value_heads: int = 4  # ssm.time_step_rank: DeltaNet value heads, a multiple of groups
    conv_kernel: int = 4
    rope_dims: int = 16
    rope_sections: tuple[int, int, int, int] = (3, 3, 2, 0)  # Qwen3.5's interleaved M-RoPE, summing to rope_dims/2
    vocab: int = 151936  # the vendored Qwen3.5 vocabulary file's tokens (the published models pad to 248,320)
    tied: bool = True
    rope_theta: float = 1e7
    experts: int = 0  # qwen35moe: routed experts per layer (0: a dense feed-forward of `ffn`)
    experts_used: int = 0
    expert_ffn: int = 0  # each routed expert's feed-forward size
    shared_ffn: int = 0  # the shared expert's

    @property
    def arch(self) -> str:
        return "qwen35moe" if self.experts else "qwen35"

    gguf_arch = arch

    def is_recurrent(self, layer: int) -> bool:
        return (layer + 1) % FULL_ATTENTION_INTERVAL[self.arch] != 0

    def ffn_tensors(self, b: str) -> list[tuple[str, tuple[int, ...]]]:
        """A layer's feed-forward tensors (b: its "blk.N." prefix), shared by both views."""
        if not self.experts:
            return [(b + "ffn_gate.weight", (self.ffn, self.hidden)), (b + "ffn_up.weight", (self.ffn, self.hidden)),
                    (b + "ffn_down.weight", (self.hidden, self.ffn))]
        n, e, sh = self.experts, self.expert_ffn, self.shared_ffn
        return [(b + "ffn_gate_inp.weight", (n, self.hidden)),
                (b + "ffn_gate_exps.weight", (n, e, self.hidden)), (b + "ffn_up_exps.weight", (n, e, self.hidden)),
                (b + "ffn_down_exps.weight", (n, self.hidden, e)), (b + "ffn_gate_inp_shexp.weight", (self.hidden,)),
                (b + "ffn_gate_shexp.weight", (sh, self.hidden)), (b + "ffn_up_shexp.weight", (sh, self.hidden)),
                (b + "ffn_down_shexp.weight", (self.hidden, sh))]

    def ar_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, numpy shape) of every tensor of the plain model, as llama.cpp's qwen35 loader creates them."""
        key_dim, value_dim = self.state * self.groups, self.state * self.value_heads
        out = _io_tensors(self)
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (self.hidden,)), (b + "post_attention_norm.weight", (self.hidden,))]
            out += self.ffn_tensors(b)
            if self.is_recurrent(i):
                out += [(b + "attn_qkv.weight", (2 * key_dim + value_dim, self.hidden)),
                        (b + "attn_gate.weight", (value_dim, self.hidden)),
                        (b + "ssm_conv1d.weight", (2 * key_dim + value_dim, self.conv_kernel)),
                        (b + "ssm_dt.bias", (self.value_heads,)), (b + "ssm_a", (self.value_heads,)),
                        (b + "ssm_beta.weight", (self.value_heads, self.hidden)),
                        (b + "ssm_alpha.weight", (self.value_heads, self.hidden)),
                        (b + "ssm_norm.weight", (self.state,)), (b + "ssm_out.weight", (self.hidden, value_dim))]
            else:  # gated attention: each head's q rows are followed by its gate rows
                out += [(b + "attn_q.weight", (2 * self.heads * self.head_dim, self.hidden)),
                        (b + "attn_k.weight", (self.kv_heads * self.head_dim, self.hidden)),
                        (b + "attn_v.weight", (self.kv_heads * self.head_dim, self.hidden)),
                        (b + "attn_output.weight", (self.hidden, self.heads * self.head_dim)),
                        (b + "attn_q_norm.weight", (self.head_dim,)), (b + "attn_k_norm.weight", (self.head_dim,))]
        return out

    def twin_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """The diffusion view's tensors: every layer tensor but the norms and the MLP, twinned (formats.twin_name)."""
        shared = ("attn_norm.weight", "post_attention_norm.weight")
        return [(twin_name(name), dims) for name, dims in self.ar_tensors()
                if name.startswith("blk.") and not name.endswith(shared) and ".ffn_" not in name]

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor of the merged file, twins included."""
        return self.ar_tensors() + self.twin_tensors()

    @property
    def n_params(self) -> int:
        return _n_params(self.tensors())

    def metadata(self, name: str) -> list[tuple]:
        """The model's own keys (tokenizer, block size and mask token apart)."""
        U, F, A = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.ARRAY
        a = self.arch
        return [("general.name", name, gguf.GGUFValueType.STRING, None),
                (f"{a}.context_length", 4096, U, None), (f"{a}.embedding_length", self.hidden, U, None),
                (f"{a}.block_count", self.layers, U, None), (f"{a}.feed_forward_length", self.ffn, U, None),
                (f"{a}.attention.head_count", self.heads, U, None),
                (f"{a}.attention.head_count_kv", self.kv_heads, U, None),
                (f"{a}.attention.key_length", self.head_dim, U, None),
                (f"{a}.attention.value_length", self.head_dim, U, None),
                (f"{a}.attention.layer_norm_rms_epsilon", 1e-6, F, None),
                (f"{a}.rope.dimension_count", self.rope_dims, U, None),
                (f"{a}.rope.dimension_sections", list(self.rope_sections), A, gguf.GGUFValueType.INT32),
                (f"{a}.rope.freq_base", self.rope_theta, F, None),
                (f"{a}.full_attention_interval", FULL_ATTENTION_INTERVAL[a], U, None),
                (f"{a}.ssm.conv_kernel", self.conv_kernel, U, None), (f"{a}.ssm.state_size", self.state, U, None),
                (f"{a}.ssm.group_count", self.groups, U, None),
                (f"{a}.ssm.time_step_rank", self.value_heads, U, None),
                (f"{a}.ssm.inner_size", self.state * self.value_heads, U, None)] + \
            ([(f"{a}.expert_count", self.experts, U, None), (f"{a}.expert_used_count", self.experts_used, U, None),
              (f"{a}.expert_feed_forward_length", self.expert_ffn, U, None),
              (f"{a}.expert_shared_feed_forward_length", self.shared_ffn, U, None)] if self.experts else [])


# Published configs (config.json of each model); the "tiny-" ones are for tests.
SHAPES = {
    "smollm2-135m": Shape("llama", 576, 30, 9, 3, 64, 1536, 49152, True, 1e5),
    "qwen3-1.7b": Shape("qwen3", 2048, 28, 16, 8, 128, 6144, 151936, True, 1e6),
    "qwen3-4b": Shape("qwen3", 2560, 36, 32, 8, 128, 9728, 151936, True, 1e6),
    "qwen3-8b": Shape("qwen3", 4096, 36, 32, 8, 128, 12288, 151936, False, 1e6),
    "llama-3.1-8b": Shape("llama", 4096, 32, 32, 8, 128, 14336, 128256, False, 5e5),
    "tiny-qwen3": Shape("qwen3", 64, 2, 4, 2, 16, 128, 151936, True, 1e6),
    "tiny-llama3": Shape("llama", 64, 2, 4, 2, 16, 128, 128256, False, 5e5),  # Llama 3's padded vocabulary
    # Qwen3.5 / Qwen3.6 (hybrid): 4B and the 27B (64 layers, 48 of them Gated DeltaNet), 248,320 embedding rows
    "qwen3.5-4b": Qwen35Shape(2560, 32, 16, 4, 256, 9216, 128, 16, 32, 4, 64, (11, 11, 10, 0), 248320, True),
    "qwen3.6-27b": Qwen35Shape(5120, 64, 24, 4, 256, 17408, 128, 16, 48, 4, 64, (11, 11, 10, 0), 248320, False),
    "tiny-qwen35": Qwen35Shape(),
    "tiny-qwen35moe": Qwen35Shape(experts=4, experts_used=2, expert_ffn=32, shared_ffn=64),
}
BLOCK_SIZE = 32  # the trained K of the published checkpoints
QWEN3_BOS, QWEN3_EOS, QWEN3_MASK = 151643, 151645, 151669
# the weight types shape files are made in, with their bytes per weight for the disk/RAM estimate before anything
# is written (Q4_K_M mixes Q4_K and Q6_K)
BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.62}


def _qwen3_tokenizer_kv(vocab_size: int) -> list[tuple]:
    """The genuine Qwen3 BPE tokenizer as llama.cpp's converter writes it (ids in order, added tokens typed,
    [PADn] filler up to the embedding rows)."""
    from ..assets import qwen3_tokenizer_dir

    src = qwen3_tokenizer_dir()
    tok = json.loads((src / "tokenizer.json").read_text())
    by_id = {i: (t, gguf.TokenType.NORMAL) for t, i in tok["model"]["vocab"].items()}
    for added in tok.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    template = json.loads((src / "tokenizer_config.json").read_text()).get("chat_template")
    S, U, A = gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.ARRAY
    kv = [("tokenizer.ggml.model", "gpt2", S, None), ("tokenizer.ggml.pre", "qwen2", S, None),
          ("tokenizer.ggml.tokens", tokens, A, S), ("tokenizer.ggml.token_type", types, A, gguf.GGUFValueType.INT32),
          ("tokenizer.ggml.merges", merges, A, S), ("tokenizer.ggml.bos_token_id", QWEN3_BOS, U, None),
          ("tokenizer.ggml.eos_token_id", QWEN3_EOS, U, None),
          ("tokenizer.ggml.padding_token_id", QWEN3_BOS, U, None),
          ("tokenizer.ggml.add_bos_token", False, gguf.GGUFValueType.BOOL, None),
          (KEY_MASK_TOKEN_ID, QWEN3_MASK, U, None)]
    if template:
        kv.append(("tokenizer.chat_template", template, S, None))
    return kv


def _smollm2_tokenizer_kv(vocab_size: int) -> list[tuple]:
    """SmolLM2's tokenizer from the real GGUF, padded with [PADn] tokens (one of them the mask) to vocab_size."""
    from ..assets import smollm2_gguf

    return _padded_tokenizer_kv(smollm2_gguf(), vocab_size)


@functools.cache
def qwen35_tokenizer_kv(vocab_size: int) -> tuple[tuple, ...]:
    """The real Qwen3.5 vocabulary of the vendored llama.cpp (models/ggml-vocab-qwen35.gguf), padded as
    _smollm2_tokenizer_kv pads: read once per process (its tokens and merges take gguf-py seconds)."""
    from ..llama_source import plain_source_dir

    return tuple(_padded_tokenizer_kv(plain_source_dir() / "models/ggml-vocab-qwen35.gguf", vocab_size))


def _padded_tokenizer_kv(path: Path, vocab_size: int) -> list[tuple]:
    """The tokenizer keys of a GGUF, its tokens cut or padded with [PADn] (unused) to vocab_size, and the last id
    as the mask token (no free id below such a vocabulary; as good a mask as any for timing)."""
    from ..convert.base_gguf import copied_metadata
    from ..gguf_meta import open_reader

    kv = [item for item in copied_metadata(open_reader(path)) if item[0].startswith("tokenizer.")]
    for i, (key, value, vtype, sub) in enumerate(kv):
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            n = len(value)
            pad = [f"[PAD{j}]".encode() for j in range(n, vocab_size)] if sub == gguf.GGUFValueType.STRING else \
                [int(gguf.TokenType.UNUSED)] * (vocab_size - n)
            kv[i] = (key, value[:vocab_size] + pad, vtype, sub)
    kv.append((KEY_MASK_TOKEN_ID, vocab_size - 1, gguf.GGUFValueType.UINT32, None))
    return kv


def _metadata(name: str, shape: Shape | Qwen35Shape) -> list[tuple]:
    a, U, F, S = shape.gguf_arch, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING
    if isinstance(shape, Qwen35Shape):
        return shape.metadata(f"{name} (random weights: timing only)") + \
            [("general.file_type", int(gguf.LlamaFileType.MOSTLY_F16), U, None),
             (KEY_BLOCK_SIZE.format(arch=a), BLOCK_SIZE, U, None)] + list(qwen35_tokenizer_kv(shape.vocab))
    kv = [("general.name", f"{name} (random weights: timing only)", S, None),
          ("general.file_type", int(gguf.LlamaFileType.MOSTLY_F16), U, None),
          (f"{a}.context_length", 40960, U, None), (f"{a}.embedding_length", shape.hidden, U, None),
          (f"{a}.block_count", shape.layers, U, None), (f"{a}.feed_forward_length", shape.ffn, U, None),
          (f"{a}.attention.head_count", shape.heads, U, None),
          (f"{a}.attention.head_count_kv", shape.kv_heads, U, None),
          (f"{a}.attention.key_length", shape.head_dim, U, None),
          (f"{a}.attention.value_length", shape.head_dim, U, None),
          (f"{a}.rope.dimension_count", shape.head_dim, U, None), (f"{a}.rope.freq_base", shape.rope_theta, F, None),
          (f"{a}.attention.layer_norm_rms_epsilon", 1e-6, F, None), (f"{a}.vocab_size", shape.vocab, U, None),
          (KEY_BLOCK_SIZE.format(arch=a), BLOCK_SIZE, U, None)]
    tokenizer = _qwen3_tokenizer_kv if shape.arch == "qwen3" else _smollm2_tokenizer_kv
    return kv + tokenizer(shape.vocab)


def write_f16(name: str, path: Path, seed: int = 0, progress: bool = True) -> Path:
    """The merged F16 file of SHAPES[name]. Matrices repeat one random tile (N(0, 0.02)); norms are ones."""
    from ..convert.gguf_out import PlannedTensor, write_gguf, write_output

    shape = SHAPES[name]
    tile = (np.random.default_rng(seed).standard_normal(1 << 22) * 0.02).astype(np.float16)
    planned = []
    for tensor, dims in shape.tensors():
        if len(dims) == 1:  # norms; a recurrent layer's A (-exp(A_log)) must be negative for its state to decay
            value = -1.0 if tensor.endswith(("ssm_a", "ssm_a_diff")) else 1.0
            planned.append(PlannedTensor(tensor, dims, gguf.GGMLQuantizationType.F32, 4 * dims[0],
                                         lambda n=dims[0], v=value: np.full(n, v, np.float32)))
        elif "ssm_conv1d" in tensor:  # llama.cpp's conv takes F32 weights
            n = int(np.prod(dims))
            planned.append(PlannedTensor(tensor, dims, gguf.GGMLQuantizationType.F32, 4 * n,
                                         lambda n=n, dims=dims: np.resize(tile, n).reshape(dims).astype(np.float32)))
        else:
            n = int(np.prod(dims))
            planned.append(PlannedTensor(tensor, dims, gguf.GGMLQuantizationType.F16, 2 * n,
                                         lambda n=n, dims=dims: np.resize(tile, n).reshape(dims)))
    write_output(path, True, lambda tmp: write_gguf(tmp, shape.gguf_arch, _metadata(name, shape), planned, progress,
                                                    label=f"{name} f16"))
    return path


def _check_room(name: str, shape: Shape, types: list[str], cache: Path) -> None:
    """Refuse before writing anything when the disk or the RAM cannot hold what the run needs."""
    need_disk = _with_headroom(sum(BYTES_PER_WEIGHT[t] * shape.n_params for t in {"f16", *types}))
    free_disk = _free_disk(cache)
    if need_disk > free_disk:
        raise PyorthrusError(f"{cache}: shape {name} ({', '.join(types)}) needs {need_disk / GIB:.1f} GiB of disk, "
                             f"{free_disk / GIB:.1f} GiB free")
    largest = _with_headroom(max(BYTES_PER_WEIGHT[t] for t in types) * shape.n_params)
    available = options.available_memory()
    if available is not None and largest > available:
        raise PyorthrusError(f"shape {name}: timing it warm needs {largest / GIB:.1f} GiB of RAM for its largest "
                             f"file, {available / GIB:.1f} GiB available")


def _with_headroom(nbytes: float) -> float:
    """Room for metadata, padding and the rest of the system: a tenth more plus 64 MiB (a flat GiB refused the
    30 MB tiny shapes on a nearly full CI disk)."""
    return nbytes * 1.1 + (64 << 20)


def _free_disk(path: Path) -> int:
    return shutil.disk_usage(path).free


def make_shape_gguf(name: str, weight_type: str, cache: Path, threads: int | None = None,
                    progress: bool = True) -> Path:
    """The cached merged GGUF of shape `name` in `weight_type` (f16, q8_0, q4_k_m), made on first use."""
    if name not in SHAPES:
        raise PyorthrusError(f"unknown shape {name!r}: choose from {', '.join(SHAPES)}")
    if weight_type not in BYTES_PER_WEIGHT:
        raise PyorthrusError(f"unknown weight type {weight_type!r}: choose from {', '.join(BYTES_PER_WEIGHT)}")
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.{weight_type}.gguf"
    if path.is_file():
        return path
    _check_room(name, SHAPES[name], [weight_type], cache)
    f16 = cache / f"{name}.f16.gguf"
    if not f16.is_file():
        write_f16(name, f16, progress=progress)
    if weight_type == "f16":
        return f16
    return quantize_gguf(f16, path, weight_type, threads)


def llama_ftype(weight_type: str) -> int:
    """llama.cpp's LLAMA_FTYPE_* of a weight type named as llama-quantize names it (f32, f16, q8_0, q4_k_m, ...;
    any case): the one table of names, so the shape files, the tests and the bench scripts quantize alike."""
    import llama_cpp.llama_cpp as L

    prefix = "LLAMA_FTYPE_MOSTLY_"
    names = {"f32": L.LLAMA_FTYPE_ALL_F32} | {name.removeprefix(prefix).lower(): getattr(L, name)
                                              for name in dir(L) if name.startswith(prefix)}
    if weight_type.lower() not in names:
        raise PyorthrusError(f"unknown weight type {weight_type!r}: choose from {', '.join(names)}")
    return names[weight_type.lower()]


def quantize_gguf(source: Path, out: Path, weight_type: str, threads: int | None = None) -> Path:
    """llama_model_quantize of a GGUF model to `weight_type` (see llama_ftype), written to a temporary file and
    renamed to `out` only when complete (processes quantizing the same file at once never see a partial one)."""
    import llama_cpp.llama_cpp as L
    from llama_cpp import _logger

    from ..model import quiet_llama_warnings

    params = L.llama_model_quantize_default_params()
    params.nthread = threads or os.cpu_count() or 1
    params.ftype = llama_ftype(weight_type)
    params.allow_requantize = True

    def quantize(tmp: Path) -> None:
        if (status := L.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)) != 0:
            raise PyorthrusError(f"{source}: llama_model_quantize to {weight_type} failed ({status})")

    # it logs a line per tensor (hundreds for a real shape), which llama-cpp-python prints until a model has set
    # its logger's level: keep errors only while it runs (and its warnings are warnings, not errors)
    quiet_llama_warnings()
    previous = _logger.logger.level
    _logger.logger.setLevel(logging.ERROR)
    try:
        atomic_write(out, quantize)
    finally:
        _logger.logger.setLevel(previous)
    return out


def default_cache() -> Path:
    return default_cache_dir() / "shapes"
