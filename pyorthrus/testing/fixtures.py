"""Tiny random Orthrus checkpoints in the upstream HF layout, for tests and CI.

`write_tiny_orthrus_qwen3` reproduces the published Orthrus-Qwen3 format: a Qwen3 config with model_type "orthrus",
architectures ["OrthrusLM"], block_size and mask_token_id = len(tokenizer) = 151669, the genuine Qwen3 tokenizer files
(with `extra_special_tokens` written as a list, as upstream does), bf16 safetensors with the `_diff` tensors next to
the base ones, optionally sharded with a model.safetensors.index.json. `write_tiny_orthrus_llama` and
`write_tiny_orthrus_qwen2` write the same layout on a Llama or Qwen2 base (`base_model_type`, our extension).
`diff_only=True` writes what the trainer writes:
the config plus the `_diff` tensors alone. The real vocabulary makes the embedding the bulk of the file, so hidden
sizes stay tiny.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..assets import qwen3_tokenizer_dir
from ..formats import config_from_hf
from ..reference import ATTENTION_PROJECTIONS, QK_NORMS

QWEN3_MASK_TOKEN_ID = 151669  # len(tokenizer) of Qwen3: the first id past the added tokens
QWEN3_VOCAB_SIZE = 151936     # Qwen3's padded embedding rows
QWEN3_BOS, QWEN3_EOS = 151643, 151645


def write_tiny_orthrus_qwen3(out_dir, seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2,
                             num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 16,
                             intermediate_size: int = 64, block_size: int = 8, shards: int = 1,
                             diff_only: bool = False, dtype: torch.dtype = torch.bfloat16,
                             tie_word_embeddings: bool = True) -> Path:
    """Upstream Orthrus-Qwen3 layout (bf16, tied embeddings like Qwen3-1.7B/4B). The same seed gives the same
    weights with or without `diff_only`, so a diff-only checkpoint plus the full one as base equals the full one."""
    config = _base_config(hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
                          tie_word_embeddings, dtype)
    config.update(model_type="orthrus", architectures=["OrthrusLM"], use_sliding_window=False,
                  sliding_window=None, layer_types=["full_attention"] * num_layers,
                  block_size=block_size, mask_token_id=QWEN3_MASK_TOKEN_ID)
    return _write(Path(out_dir), config, seed, qk_norm=True, shards=shards, diff_only=diff_only, dtype=dtype)


def write_tiny_orthrus_llama(out_dir, seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2,
                             num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 8,
                             intermediate_size: int = 64, block_size: int = 8, shards: int = 1,
                             diff_only: bool = False, dtype: torch.dtype = torch.float32,
                             tie_word_embeddings: bool = True, attention_bias: bool = False) -> Path:
    """Llama base (no q/k norms), float32 by default so round trips test the f32 path. It borrows the Qwen3
    tokenizer (and vocabulary size), the only HF tokenizer available here. `attention_bias` adds q/k/v/o biases to
    both attention sets (Llama's `attention_bias` config flag)."""
    config = _base_config(hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
                          tie_word_embeddings, dtype)
    config.update(model_type="orthrus", base_model_type="llama", architectures=["OrthrusLM"],
                  attention_bias=attention_bias,
                  mlp_bias=False, pretraining_tp=1, block_size=block_size, mask_token_id=QWEN3_MASK_TOKEN_ID)
    return _write(Path(out_dir), config, seed, qk_norm=False, shards=shards, diff_only=diff_only, dtype=dtype)


def write_tiny_orthrus_qwen2(out_dir, seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2,
                             num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 64,
                             block_size: int = 8, shards: int = 1, diff_only: bool = False,
                             dtype: torch.dtype = torch.bfloat16, tie_word_embeddings: bool = True) -> Path:
    """Qwen2/Qwen2.5 base: q/k/v projections with biases (both views), no o bias, no q/k norms, head_dim =
    hidden_size / num_heads. It borrows the Qwen3 tokenizer (Qwen2.5 has the same vocabulary size)."""
    config = _base_config(hidden_size, num_layers, num_heads, num_kv_heads, hidden_size // num_heads,
                          intermediate_size, tie_word_embeddings, dtype)
    del config["head_dim"], config["attention_bias"]  # not Qwen2 config fields
    config.update(model_type="orthrus", base_model_type="qwen2", architectures=["OrthrusLM"],
                  use_sliding_window=False, sliding_window=None, max_window_layers=num_layers,
                  block_size=block_size, mask_token_id=QWEN3_MASK_TOKEN_ID)
    return _write(Path(out_dir), config, seed, qk_norm=False, shards=shards, diff_only=diff_only, dtype=dtype)


def write_diff_only_for_gguf(out_dir, base_gguf, mask_token_id: int, block_size: int = 16, seed: int = 0,
                             noise: float = 0.01, dtype: torch.dtype = torch.float32) -> Path:
    """What the trainer writes for a base GGUF (e.g. SmolLM2): config.json + `_diff` tensors only, initialised from
    the base's AR attention weights (dequantized, Q/K un-permuted to HF order) plus `noise` x N(0, 1) so the diff
    weights are distinguishable from the AR ones. Reads only the attention tensors of the base."""
    from safetensors.torch import save_file

    from ..gguf_meta import open_reader
    from ..reference import config_from_gguf, gguf_tensor_f32, llama_qk_permute_heads, unpermute_qk_rows

    reader = open_reader(base_gguf)
    cfg = config_from_gguf(reader, str(base_gguf))
    gen = torch.Generator().manual_seed(seed)
    hf_names = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
                "attn_q_norm": "q_norm", "attn_k_norm": "k_norm"}
    tensors = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) != 4 or parts[2] not in hf_names:
            continue
        value = gguf_tensor_f32(tensor)
        heads = llama_qk_permute_heads(cfg, tensor.name)
        if heads:
            value = unpermute_qk_rows(value, heads)
        value = torch.from_numpy(value)
        value = value + noise * torch.randn(value.shape, generator=gen)
        tensors[f"model.layers.{parts[1]}.self_attn.{hf_names[parts[2]]}_diff.{parts[3]}"] = value.to(dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = _base_config(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                          cfg.intermediate_size, cfg.tie_word_embeddings, dtype)
    config.update(model_type="orthrus", base_model_type=cfg.base, architectures=["OrthrusLM"],
                  vocab_size=cfg.vocab_size, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
                  block_size=block_size, mask_token_id=mask_token_id)
    config.pop("bos_token_id"), config.pop("eos_token_id")  # Qwen3's ids; this checkpoint has no tokenizer
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def _base_config(hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
                 tie_word_embeddings, dtype) -> dict:
    return {
        "vocab_size": QWEN3_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": tie_word_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": QWEN3_BOS,
        "eos_token_id": QWEN3_EOS,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _random_weights(config: dict, seed: int, qk_norm: bool) -> dict[str, torch.Tensor]:
    """HF-named random weights scaled so logits are well spread (no near-ties in greedy tests)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    cfg = config_from_hf(config)
    head_dim, biased = cfg.head_dim, cfg.biased_projections
    q_out, kv_out = cfg.num_heads * head_dim, cfg.num_kv_heads * head_dim

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return torch.randn(out_features, in_features, generator=gen) / in_features**0.5

    def norm(size: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(size, generator=gen)

    tensors = {"model.embed_tokens.weight": torch.randn(config["vocab_size"], hidden, generator=gen)}
    shapes = {"q_proj": (q_out, hidden), "k_proj": (kv_out, hidden), "v_proj": (kv_out, hidden),
              "o_proj": (hidden, q_out)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm(hidden)
        tensors[p + "post_attention_layernorm.weight"] = norm(hidden)
        for suffix in ("", "_diff"):
            for proj in ATTENTION_PROJECTIONS:
                tensors[f"{p}self_attn.{proj}{suffix}.weight"] = linear(*shapes[proj])
                if proj in biased:
                    tensors[f"{p}self_attn.{proj}{suffix}.bias"] = 0.1 * torch.randn(shapes[proj][0], generator=gen)
            if qk_norm:
                for qk in QK_NORMS:
                    tensors[f"{p}self_attn.{qk}{suffix}.weight"] = norm(head_dim)
        tensors[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
        tensors[p + "mlp.up_proj.weight"] = linear(inter, hidden)
        tensors[p + "mlp.down_proj.weight"] = linear(hidden, inter)
    tensors["model.norm.weight"] = norm(hidden)
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = linear(config["vocab_size"], hidden)
    return tensors


def _write(out_dir: Path, config: dict, seed: int, qk_norm: bool, shards: int, diff_only: bool,
           dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype).contiguous() for k, v in _random_weights(config, seed, qk_norm).items()}
    if diff_only:
        tensors = {k: v for k, v in tensors.items() if "_diff." in k}
    names = list(tensors)
    shards = max(1, min(shards, len(names)))
    if shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        # Contiguous runs of names per shard, as HF's save_pretrained does; the embedding gets a shard of its own.
        per_shard = -(-len(names) // shards)
        weight_map = {}
        for index in range(shards):
            part = names[index * per_shard:(index + 1) * per_shard]
            file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in part}, str(out_dir / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copy_tokenizer(out_dir)
    return out_dir


def copy_tokenizer(out_dir: Path) -> None:
    """The genuine Qwen3 tokenizer, with `extra_special_tokens` as a list like the upstream checkpoints."""
    src = qwen3_tokenizer_dir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(src / name, out_dir / name)
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["extra_special_tokens"] = list(tok_config.pop("additional_special_tokens", []))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
