"""Tiny random `qwen35` GGUFs: Qwen3.5's hybrid layout (Gated DeltaNet layers, every fourth layer gated attention)
written with gguf-py as llama.cpp's converter lays it out, with the real Qwen3.5 vocabulary of the vendored llama.cpp
(models/ggml-vocab-qwen35.gguf, 151,936 tokens), optionally as a merged Orthrus file: every layer with its diffusion
view (an attention layer's `attn_*_diff`, a DeltaNet layer's twin `attn_qkv_diff`, `ssm_*_diff`; twin_name()).
Random weights: for cache, state and decoding-loop tests, not for text."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..convert.base_gguf import copied_metadata
from ..convert.gguf_out import PlannedTensor, write_gguf, write_output
from ..formats import KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID, twin_name
from ..gguf_meta import FULL_ATTENTION_INTERVAL, open_reader
from ..llama_source import plain_source_dir

VOCAB_FILE = Path("models/ggml-vocab-qwen35.gguf")  # in the vendored llama.cpp tree


@dataclass(frozen=True)
class TinyQwen35:
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

    def is_recurrent(self, layer: int) -> bool:
        return (layer + 1) % FULL_ATTENTION_INTERVAL["qwen35"] != 0

    def tensors(self, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, numpy shape) of every tensor, as llama.cpp's qwen35 loader creates them."""
        key_dim, value_dim = self.state * self.groups, self.state * self.value_heads
        out = [("token_embd.weight", (vocab, self.hidden)), ("output_norm.weight", (self.hidden,))]
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (self.hidden,)), (b + "post_attention_norm.weight", (self.hidden,)),
                    (b + "ffn_gate.weight", (self.ffn, self.hidden)), (b + "ffn_up.weight", (self.ffn, self.hidden)),
                    (b + "ffn_down.weight", (self.hidden, self.ffn))]
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

    def twin_tensors(self, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
        """The diffusion view's tensors: a twin of each attention projection and q/k norm and of each DeltaNet
        layer's weights (everything of a layer but its norms and MLP)."""
        shared = ("attn_norm.weight", "post_attention_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                  "ffn_down.weight")
        return [(twin_name(name), dims) for name, dims in self.tensors(vocab)
                if name.startswith("blk.") and not name.endswith(shared)]

    def metadata(self) -> list[tuple]:
        U, F, A = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.ARRAY
        a = "qwen35"
        return [("general.name", "tiny qwen35 (random weights)", gguf.GGUFValueType.STRING, None),
                (f"{a}.context_length", 4096, U, None), (f"{a}.embedding_length", self.hidden, U, None),
                (f"{a}.block_count", self.layers, U, None), (f"{a}.feed_forward_length", self.ffn, U, None),
                (f"{a}.attention.head_count", self.heads, U, None),
                (f"{a}.attention.head_count_kv", self.kv_heads, U, None),
                (f"{a}.attention.key_length", self.head_dim, U, None),
                (f"{a}.attention.value_length", self.head_dim, U, None),
                (f"{a}.attention.layer_norm_rms_epsilon", 1e-6, F, None),
                (f"{a}.rope.dimension_count", self.rope_dims, U, None),
                (f"{a}.rope.dimension_sections", list(self.rope_sections), A, gguf.GGUFValueType.INT32),
                (f"{a}.rope.freq_base", 1e7, F, None),
                (f"{a}.full_attention_interval", FULL_ATTENTION_INTERVAL["qwen35"], U, None),
                (f"{a}.ssm.conv_kernel", self.conv_kernel, U, None), (f"{a}.ssm.state_size", self.state, U, None),
                (f"{a}.ssm.group_count", self.groups, U, None),
                (f"{a}.ssm.time_step_rank", self.value_heads, U, None),
                (f"{a}.ssm.inner_size", self.state * self.value_heads, U, None)]


@functools.cache
def qwen35_tokenizer_kv() -> tuple[tuple, ...]:
    """The tokenizer keys of the vendored Qwen3.5 vocabulary file, as (key, value, type, sub-type): read once per
    process (248k tokens and merges take gguf-py seconds)."""
    vocab = plain_source_dir() / VOCAB_FILE
    return tuple(kv for kv in copied_metadata(open_reader(vocab)) if kv[0].startswith("tokenizer."))


def write_tiny_qwen35(path: Path, seed: int = 0, config: TinyQwen35 = TinyQwen35(),
                      block_size: int | None = None, twin_noise: float | None = None) -> Path:
    """A tiny random qwen35 GGUF at path (F32, the embedding F16). Norms are near one, `ssm_a` (-exp(A_log))
    negative, matrices N(0, 0.1): enough for the recurrent state to change every token's logits. block_size: a
    merged Orthrus file of that trained K instead (mask token: the last id), its diffusion view random too, or with
    twin_noise each twin its AR tensor plus N(0, twin_noise) noise (drafts that AR accepts part of the time)."""
    rng = np.random.default_rng(seed)
    tokenizer = qwen35_tokenizer_kv()
    vocab = len(next(v for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens"))
    tensors, metadata = config.tensors(vocab), config.metadata() + list(tokenizer)
    if block_size is not None:
        tensors += config.twin_tensors(vocab)
        U = gguf.GGUFValueType.UINT32
        metadata += [(KEY_BLOCK_SIZE.format(arch="qwen35"), block_size, U, None), (KEY_MASK_TOKEN_ID, vocab - 1, U, None)]

    def random(name: str, dims: tuple[int, ...]) -> np.ndarray:
        if name.endswith(("ssm_a", "ssm_a_diff")):
            return -np.exp(rng.standard_normal(dims) * 0.5).astype(np.float32)
        if name.endswith("norm.weight"):
            return (1.0 + rng.standard_normal(dims) * 0.1).astype(np.float32)
        return (rng.standard_normal(dims) * 0.1).astype(np.float16 if name == "token_embd.weight" else np.float32)

    data = {}
    ar_of = {twin_name(name): name for name, _ in config.tensors(vocab)}
    for name, dims in tensors:
        if twin_noise is not None and name in ar_of:
            ar = data[ar_of[name]]  # the AR tensors come first
            # a negative A stays negative (the twin decays as its AR layer does)
            data[name] = ar if name.endswith("ssm_a_diff") else \
                (ar + rng.standard_normal(dims) * twin_noise).astype(np.float32)
        else:
            data[name] = random(name, dims)

    planned = []
    for name, dims in tensors:
        qtype = gguf.GGMLQuantizationType.F16 if data[name].dtype == np.float16 else gguf.GGMLQuantizationType.F32
        planned.append(PlannedTensor(name, dims, qtype, data[name].nbytes, lambda array=data[name]: array))
    write_output(path, True, lambda tmp: write_gguf(tmp, "qwen35", metadata, planned, progress=False))
    return Path(path)


def write_tiny_orthrus_qwen35_checkpoint(out_dir: Path, seed: int = 0, config: TinyQwen35 = TinyQwen35(),
                                         block_size: int = 8, twin_noise: float | None = None,
                                         dtype=None, logit_scale: float = 1.0) -> Path:
    """A tiny random checkpoint in the reference's Orthrus-Qwen3.5 format (model_type "orthrus_qwen3_5"): the flat
    Qwen3.5 text config (transformers' keys, the MTP count kept, its weights not saved) plus block_size and
    mask_token_id, every AR tensor and its `_diff` twin in one safetensors file (bf16 by default), and a tokenizer.
    The twins are copies of their AR tensors, as the reference initialises them, or with twin_noise those plus
    N(0, twin_noise). Norms use Qwen3.5's (1 + w) form except the DeltaNet output norm. It borrows the Qwen3
    tokenizer files (the Qwen3.5 vocabulary ships only as a GGUF here). logit_scale multiplies the output matrix:
    sharper next-token distributions, whose argmax a trained draft can learn (for the trainer's test)."""
    import torch
    from safetensors.torch import save_file

    from .fixtures import QWEN3_BOS, QWEN3_EOS, QWEN3_MASK_TOKEN_ID, QWEN3_VOCAB_SIZE, copy_tokenizer

    c, vocab = config, QWEN3_VOCAB_SIZE
    dtype = dtype or torch.bfloat16
    gen = torch.Generator().manual_seed(seed)
    key_dim, value_dim = c.state * c.groups, c.state * c.value_heads

    def linear(rows: int, cols: int):
        return torch.randn(rows, cols, generator=gen) / cols**0.5

    def offset_norm(size: int):  # Qwen3_5RMSNorm scales by (1 + w)
        return 0.1 * torch.randn(size, generator=gen)

    tensors = {"model.embed_tokens.weight": torch.randn(vocab, c.hidden, generator=gen),
               "model.norm.weight": offset_norm(c.hidden), "lm_head.weight": logit_scale * linear(vocab, c.hidden)}
    for i in range(c.layers):
        p = f"model.layers.{i}."
        layer = {"input_layernorm.weight": offset_norm(c.hidden),
                 "post_attention_layernorm.weight": offset_norm(c.hidden),
                 "mlp.gate_proj.weight": linear(c.ffn, c.hidden), "mlp.up_proj.weight": linear(c.ffn, c.hidden),
                 "mlp.down_proj.weight": linear(c.hidden, c.ffn)}
        if c.is_recurrent(i):
            mixer = {"in_proj_qkv.weight": linear(2 * key_dim + value_dim, c.hidden),
                     "in_proj_z.weight": linear(value_dim, c.hidden),
                     "in_proj_b.weight": linear(c.value_heads, c.hidden),
                     "in_proj_a.weight": linear(c.value_heads, c.hidden),
                     "conv1d.weight": 0.5 * torch.randn(2 * key_dim + value_dim, 1, c.conv_kernel, generator=gen),
                     "dt_bias": torch.randn(c.value_heads, generator=gen),
                     "A_log": 0.5 * torch.randn(c.value_heads, generator=gen),
                     "norm.weight": 1.0 + 0.1 * torch.randn(c.state, generator=gen),  # gated norm: plain w
                     "out_proj.weight": linear(c.hidden, value_dim)}
            module = "linear_attn."
        else:  # each head's q rows are followed by its gate rows
            mixer = {"q_proj.weight": linear(2 * c.heads * c.head_dim, c.hidden),
                     "k_proj.weight": linear(c.kv_heads * c.head_dim, c.hidden),
                     "v_proj.weight": linear(c.kv_heads * c.head_dim, c.hidden),
                     "o_proj.weight": linear(c.hidden, c.heads * c.head_dim),
                     "q_norm.weight": offset_norm(c.head_dim), "k_norm.weight": offset_norm(c.head_dim)}
            module = "self_attn."
        for name, value in mixer.items():
            stem, dot, suffix = name.rpartition(".")
            twin = f"{stem}_diff.{suffix}" if dot else f"{name}_diff"
            noise = 0.0 if twin_noise is None else twin_noise * torch.randn(value.shape, generator=gen)
            layer[module + name], layer[module + twin] = value, value + noise
        tensors.update({p + k: v for k, v in layer.items()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    hf_config = {
        "architectures": ["OrthrusQwen3_5ForCausalLM"], "model_type": "orthrus_qwen3_5",
        "vocab_size": vocab, "hidden_size": c.hidden, "intermediate_size": c.ffn, "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
        "hidden_act": "silu", "max_position_embeddings": 32768, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
        "use_cache": False, "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e7,
                            "partial_rotary_factor": c.rope_dims / c.head_dim,
                            "mrope_section": list(c.rope_sections[:3]), "mrope_interleaved": True},
        "linear_conv_kernel_dim": c.conv_kernel, "linear_key_head_dim": c.state, "linear_value_head_dim": c.state,
        "linear_num_key_heads": c.groups, "linear_num_value_heads": c.value_heads,
        "layer_types": ["linear_attention" if c.is_recurrent(i) else "full_attention" for i in range(c.layers)],
        "mtp_num_hidden_layers": 1, "bos_token_id": QWEN3_BOS, "eos_token_id": QWEN3_EOS,
        "dtype": str(dtype).removeprefix("torch."), "block_size": block_size, "mask_token_id": QWEN3_MASK_TOKEN_ID,
    }
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    copy_tokenizer(out_dir)
    return out_dir
