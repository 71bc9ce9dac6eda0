"""Random-weight merged Orthrus GGUFs of real model shapes, for timing only.

A pass costs what the shapes and weight types make it cost, not what the values are, so a 1.7B-8B model that cannot
be downloaded here (or carried to a lent GPU) can be made where it runs: `SHAPES` lists the published configs,
`make_shape_gguf` writes an F16 merged file of that shape with gguf-py (the real Qwen3 tokenizer, or SmolLM2's for
Llama shapes, padded to the vocabulary size as llama.cpp's converter pads), then quantizes it with
`llama_model_quantize`. Files are cached by (shape, type). Every result made from them is "random weights: timing
only": tokens, acceptance and text mean nothing.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..errors import PyorthrusError
from ..files import atomic_write
from ..formats import KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID
from ..paths import default_cache_dir

GIB = 1 << 30


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
        out = [("token_embd.weight", (self.vocab, self.hidden)), ("output_norm.weight", (self.hidden,))]
        if not self.tied:
            out.append(("output.weight", (self.vocab, self.hidden)))
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
        return sum(int(np.prod(shape)) for _, shape in self.tensors())


# Published configs (config.json of each model); the "tiny-" ones are for tests.
SHAPES = {
    "smollm2-135m": Shape("llama", 576, 30, 9, 3, 64, 1536, 49152, True, 1e5),
    "qwen3-1.7b": Shape("qwen3", 2048, 28, 16, 8, 128, 6144, 151936, True, 1e6),
    "qwen3-4b": Shape("qwen3", 2560, 36, 32, 8, 128, 9728, 151936, True, 1e6),
    "qwen3-8b": Shape("qwen3", 4096, 36, 32, 8, 128, 12288, 151936, False, 1e6),
    "llama-3.1-8b": Shape("llama", 4096, 32, 32, 8, 128, 14336, 128256, False, 5e5),
    "tiny-qwen3": Shape("qwen3", 64, 2, 4, 2, 16, 128, 151936, True, 1e6),
    "tiny-llama3": Shape("llama", 64, 2, 4, 2, 16, 128, 128256, False, 5e5),  # Llama 3's padded vocabulary
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
    from ..convert.base_gguf import copied_metadata
    from ..gguf_meta import open_reader

    from ..assets import smollm2_gguf

    kv = [item for item in copied_metadata(open_reader(smollm2_gguf())) if item[0].startswith("tokenizer.")]
    for i, (key, value, vtype, sub) in enumerate(kv):
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            n = len(value)
            pad = [f"[PAD{j}]".encode() for j in range(n, vocab_size)] if sub == gguf.GGUFValueType.STRING else \
                [int(gguf.TokenType.UNUSED)] * (vocab_size - n)
            kv[i] = (key, value[:vocab_size] + pad, vtype, sub)
    # SmolLM2 has no free id below its vocabulary; the last row is as good a mask as any for timing
    kv.append((KEY_MASK_TOKEN_ID, vocab_size - 1, gguf.GGUFValueType.UINT32, None))
    return kv


def _metadata(name: str, shape: Shape) -> list[tuple]:
    a, U, F, S = shape.gguf_arch, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING
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
        if len(dims) == 1:
            planned.append(PlannedTensor(tensor, dims, gguf.GGMLQuantizationType.F32, 4 * dims[0],
                                         lambda n=dims[0]: np.ones(n, np.float32)))
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
    available = _mem_available()
    if available is not None and largest > available:
        raise PyorthrusError(f"shape {name}: timing it warm needs {largest / GIB:.1f} GiB of RAM for its largest "
                             f"file, {available / GIB:.1f} GiB available")


def _with_headroom(nbytes: float) -> float:
    """Room for metadata, padding and the rest of the system: a tenth more plus 64 MiB (a flat GiB refused the
    30 MB tiny shapes on a nearly full CI disk)."""
    return nbytes * 1.1 + (64 << 20)


def _free_disk(path: Path) -> int:
    return shutil.disk_usage(path).free


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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

    params = L.llama_model_quantize_default_params()
    params.nthread = threads or os.cpu_count() or 1
    params.ftype = llama_ftype(weight_type)
    params.allow_requantize = True

    def quantize(tmp: Path) -> None:
        if (status := L.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)) != 0:
            raise PyorthrusError(f"{source}: llama_model_quantize to {weight_type} failed ({status})")

    atomic_write(out, quantize)
    return out


def default_cache() -> Path:
    return default_cache_dir() / "shapes"
