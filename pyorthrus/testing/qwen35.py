"""Tiny random `qwen35` GGUFs: Qwen3.5's hybrid layout (Gated DeltaNet layers, every fourth layer gated attention,
pyorthrus.bench.shapes.Qwen35Shape) written with gguf-py as llama.cpp's converter lays it out, with the real Qwen3.5
vocabulary of the vendored llama.cpp (models/ggml-vocab-qwen35.gguf, 151,936 tokens), optionally as a merged Orthrus
file: every layer with its diffusion view (an attention layer's `attn_*_diff`, a DeltaNet layer's twin
`attn_qkv_diff`, `ssm_*_diff`; formats.twin_name()). And tiny random checkpoints in the reference's Orthrus-Qwen3.5
format. Random weights: for cache, state, conversion and decoding-loop tests, not for text."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from ..bench.shapes import Qwen35Shape, qwen35_tokenizer_kv
from ..convert.gguf_out import PlannedTensor, write_gguf, write_output
from ..formats import KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID, KEY_RECURRENT_DRAFT, RECURRENT_DRAFT, twin_name
from ..gguf_meta import gguf_field, open_reader, recurrent_layers


def write_tiny_qwen35(path: Path, seed: int = 0, config: Qwen35Shape = Qwen35Shape(),
                      block_size: int | None = None, twin_noise: float | None = None,
                      recurrent_draft: str = RECURRENT_DRAFT) -> Path:
    """A tiny random qwen35 GGUF at path (F32, the embedding F16). Norms are near one, `ssm_a` (-exp(A_log))
    negative, matrices N(0, 0.1): enough for the recurrent state to change every token's logits. block_size: a
    merged Orthrus file of that trained K instead (mask token: the last id), its diffusion view random too, or with
    twin_noise each twin its AR tensor plus N(0, twin_noise) noise (drafts that AR accepts part of the time), its
    recurrent layers' draft scheme named recurrent_draft (llama.cpp runs formats.RECURRENT_DRAFT only)."""
    rng = np.random.default_rng(seed)
    tensors = config.ar_tensors()
    metadata = config.metadata(f"tiny {config.arch} (random weights)") + list(qwen35_tokenizer_kv(config.vocab))
    if block_size is not None:
        tensors += config.twin_tensors()
        metadata += [(KEY_BLOCK_SIZE.format(arch=config.arch), block_size, gguf.GGUFValueType.UINT32, None),
                     (KEY_RECURRENT_DRAFT.format(arch=config.arch), recurrent_draft, gguf.GGUFValueType.STRING, None)]

    def random(name: str, dims: tuple[int, ...]) -> np.ndarray:
        if name.endswith(("ssm_a", "ssm_a_diff")):
            return -np.exp(rng.standard_normal(dims) * 0.5).astype(np.float32)
        if name.endswith("norm.weight"):
            return (1.0 + rng.standard_normal(dims) * 0.1).astype(np.float32)
        return (rng.standard_normal(dims) * 0.1).astype(np.float16 if name == "token_embd.weight" else np.float32)

    data = {}
    ar_of = {twin_name(name): name for name, _ in config.ar_tensors()}
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
    write_output(path, True, lambda tmp: write_gguf(tmp, config.arch, metadata, planned, progress=False))
    return Path(path)


def write_tiny_qwen35_adapter(merged: Path, path: Path, recurrent_draft: str = RECURRENT_DRAFT) -> Path:
    """The adapter file of a tiny merged file (write_tiny_qwen35 with a block size): its twins, byte for byte, and
    the keys `pyorthrus convert --adapter-out` writes. It fits the base write_tiny_qwen35 makes from the same seed
    and config without a block size (the AR tensors are drawn first)."""
    from ..convert import adapter_kv
    from ..convert.base_gguf import planned_base_tensors

    reader = open_reader(merged)
    arch = gguf_field(reader, "general.architecture")
    key = lambda name: gguf_field(reader, f"{arch}.{name}")  # noqa: E731
    base = {"block_count": key("block_count"), "embedding_length": key("embedding_length"),
            "head_count": key("attention.head_count"), "head_count_kv": key("attention.head_count_kv"),
            "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data)}
    recurrent = set(recurrent_layers(reader, arch, base["block_count"]))
    kv = adapter_kv(f"tiny {arch} Orthrus adapter", arch, gguf_field(reader, KEY_BLOCK_SIZE.format(arch=arch)),
                    gguf_field(reader, KEY_MASK_TOKEN_ID), base, [i in recurrent for i in range(base["block_count"])],
                    recurrent_draft)
    twins = [t for t in planned_base_tensors(reader) if "_diff" in t.name]
    write_output(path, True, lambda tmp: write_gguf(tmp, arch, kv, twins, progress=False))
    return Path(path)


def write_tiny_orthrus_qwen35_checkpoint(out_dir: Path, seed: int = 0, config: Qwen35Shape = Qwen35Shape(),
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


def llama_cpp_views(path: Path, prefix: list[int], draft: list[int], verify: list[int], flash_attn: bool = False):
    """llama.cpp's logits on a merged qwen35/qwen35moe file (F32 cache): the AR view's over `prefix`, the diffusion
    view's over the block `draft` after it, and, that block taken back through the state snapshots, the AR view's
    over the block `verify` at the same place. What tests compare with pyorthrus.reference_qwen35."""
    from .. import _lib
    from .harness import Context, Model

    model = Model(path)
    ctx = Context(model, n_ctx=64, n_batch=32, flash_attn=flash_attn, kv_f32=True, n_rs_seq=len(draft))
    try:
        s = len(prefix)
        assert ctx.decode(prefix, 0, all_logits=True) == 0
        views = [ctx.logits_rows(s)]
        assert _lib.llama_orthrus_set_diffusion(ctx.ptr, True) == 0
        assert ctx.decode(draft, s, all_logits=True) == 0
        views.append(ctx.logits_rows(len(draft)))
        assert ctx.seq_rm(s)  # the draft block, taken back from the DeltaNet layers through their snapshots
        assert _lib.llama_orthrus_set_diffusion(ctx.ptr, False) == 0
        assert ctx.decode(verify, s, all_logits=True) == 0
        views.append(ctx.logits_rows(len(verify)))
    finally:
        ctx.close()
        model.close()
    return views
