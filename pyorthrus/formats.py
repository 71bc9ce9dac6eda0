"""Orthrus checkpoint facts shared by the PyTorch reference and the converter, with no torch dependency.

The configuration of an Orthrus model (from an HF config.json) and the Q/K row layout llama.cpp uses for Llama
bases. `pyorthrus convert` (adapter and --base merged files) and `pyorthrus inspect` need only numpy and gguf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import PyorthrusError

QWEN3 = "qwen3"
QWEN2 = "qwen2"
LLAMA = "llama"
QWEN35 = "qwen35"  # Qwen3.5 / Qwen3.6: Gated DeltaNet layers among gated attention layers (issue 37)
SUPPORTED_BASES = (QWEN3, QWEN2, LLAMA, QWEN35)
# GGUF architecture -> base ("orthrus" is the community merged format of a Qwen3 base).
GGUF_ARCH_TO_BASE = {"qwen3": QWEN3, "orthrus": QWEN3, "qwen2": QWEN2, "llama": LLAMA, "qwen35": QWEN35,
                     "qwen35moe": QWEN35}
# checkpoint model_type -> base: the reference's Qwen3 format ("orthrus", `base_model_type` for our Llama and Qwen2
# checkpoints) and its Orthrus-Qwen3.5 format (a flat Qwen3.5 text config)
CHECKPOINT_MODEL_TYPES = {"orthrus": QWEN3, "orthrus_qwen3_5": QWEN35}
# hybrid architectures whose layers are recurrent unless every Nth is attention: the default N per arch (llama.cpp's
# `{arch}.full_attention_interval` when a GGUF has neither that key nor `attention.recurrent_layers`; transformers'
# `full_attention_interval` when a config has no `layer_types`)
FULL_ATTENTION_INTERVAL = {"qwen35": 4, "qwen35moe": 4}
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
QK_NORMS = ("q_norm", "k_norm")
# a Qwen3.5 Gated DeltaNet layer's modules (`linear_attn.<name>`), each with a `<name>_diff` twin in an Orthrus
# checkpoint; dt_bias and A_log are bare parameters (no .weight)
DELTANET_MODULES = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "conv1d", "norm", "out_proj")
DELTANET_PARAMETERS = ("dt_bias", "A_log")

# GGUF names of Orthrus files, as the patched llama.cpp reads them (patches 0002 and 0003), in one place as gguf-py
# keeps llama.cpp's (gguf.Keys). Adapter files: general.type "adapter", adapter.type "orthrus", the block size under
# the orthrus prefix, and the shape of the base they were trained on; merged files: "{arch}.diffusion.block_size".
KEY_GENERAL_TYPE = "general.type"
KEY_ADAPTER_TYPE = "adapter.type"
ADAPTER_TYPE_ORTHRUS = "orthrus"
KEY_MASK_TOKEN_ID = "tokenizer.ggml.mask_token_id"
KEY_BLOCK_SIZE = "{arch}.diffusion.block_size"
KEY_ADAPTER_BLOCK_SIZE = KEY_BLOCK_SIZE.format(arch="orthrus")
# how a hybrid model's recurrent layers draft: the one scheme the patched llama.cpp runs (patch 0026), each layer's
# own twin scanning the block causally from the cached state; llama.cpp refuses any other value by name (the door
# for the "dual scan" scheme of a vLLM port, not built)
KEY_RECURRENT_DRAFT = "{arch}.diffusion.recurrent_draft"
KEY_ADAPTER_RECURRENT_DRAFT = KEY_RECURRENT_DRAFT.format(arch="orthrus")
RECURRENT_DRAFT = "causal_twin"
KEY_ADAPTER_BASE = "orthrus.base."  # + block_count, embedding_length, head_count, head_count_kv, vocab_size
# AR attention tensor -> its diffusion-view twin, in blk.N.<name>.weight / .bias
DIFF_TENSOR_OF = {name: f"{name}_diff" for name in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                                                   "attn_k_norm")}
DIFF_TENSORS = tuple(DIFF_TENSOR_OF.values())
# a Gated DeltaNet layer's twin (qwen35), in blk.N.<name>.weight (ssm_dt_diff: .bias; ssm_a_diff: no suffix)
RECURRENT_DIFF_TENSORS = ("attn_qkv_diff", "attn_gate_diff", "ssm_conv1d_diff", "ssm_dt_diff", "ssm_a_diff",
                          "ssm_beta_diff", "ssm_alpha_diff", "ssm_norm_diff", "ssm_out_diff")


def qwen35_twin_names(cfg: "OrthrusConfig") -> list[str]:
    """The HF names of an Orthrus-Qwen3.5 checkpoint's twins: each Gated DeltaNet layer's modules and parameters,
    each attention layer's q/k/v/o projections and q/k norms."""
    names = []
    for layer in range(cfg.num_layers):
        if layer in cfg.linear_layers:
            prefix = f"model.layers.{layer}.linear_attn."
            names += [prefix + m + "_diff.weight" for m in DELTANET_MODULES]
            names += [prefix + p + "_diff" for p in DELTANET_PARAMETERS]
        else:
            prefix = f"model.layers.{layer}.self_attn."
            names += [prefix + m + "_diff.weight" for m in ATTENTION_PROJECTIONS + QK_NORMS]
    return names


def qwen35_gguf_arch(hf: dict) -> str:
    """llama.cpp's architecture for a Qwen3.5 text config: qwen35moe where it has routed experts, else qwen35."""
    return "qwen35moe" if hf.get("num_experts") else "qwen35"


def hf_ar_name(diff_name: str) -> str:
    """The HF name of a twin's AR tensor: ...q_proj_diff.weight -> ...q_proj.weight, ...A_log_diff -> ...A_log."""
    stem, _, suffix = diff_name.rpartition(".")
    return f"{stem.removesuffix('_diff')}.{suffix}" if suffix in ("weight", "bias") else diff_name.removesuffix("_diff")


def twin_name(name: str) -> str:
    """The GGUF name of a tensor's diffusion-view twin: blk.N.X.weight -> blk.N.X_diff.weight, blk.N.ssm_a ->
    blk.N.ssm_a_diff."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem}_diff.{suffix}" if suffix in ("weight", "bias") else f"{name}_diff"


@dataclass(frozen=True)
class OrthrusConfig:
    base: str  # "qwen3", "qwen2", "llama" or "qwen35"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool = False  # Llama's flag: biases on all four projections (Qwen2 has q/k/v biases always)
    block_size: int = 32
    mask_token_id: int | None = None
    linear_layers: tuple[int, ...] = ()  # qwen35: the Gated DeltaNet layers (the others are gated attention)

    @property
    def has_qk_norm(self) -> bool:
        return self.base == QWEN3

    @property
    def biased_projections(self) -> tuple[str, ...]:
        """The attention projections that carry a bias, in both views."""
        if self.base == QWEN2:
            return ATTENTION_PROJECTIONS[:3]
        return ATTENTION_PROJECTIONS if self.attention_bias else ()


def config_from_hf(hf: dict, source: str = "config.json") -> OrthrusConfig:
    """OrthrusConfig from an Orthrus (or plain Qwen3/Qwen2/Llama) config.json. Upstream Orthrus configs are Qwen3
    configs with model_type "orthrus"; our Llama- and Qwen2-based checkpoints add `base_model_type`."""
    if not isinstance(hf, dict):
        raise PyorthrusError(f"{source}: expected a JSON object, not {type(hf).__name__}")
    model_type = hf.get("model_type")
    base = hf.get("base_model_type", QWEN3) if model_type == "orthrus" else \
        CHECKPOINT_MODEL_TYPES.get(model_type, model_type)
    if base not in SUPPORTED_BASES:
        raise PyorthrusError(f"{source}: unsupported base model type {base!r} (supported: {', '.join(SUPPORTED_BASES)})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise PyorthrusError(f"{source}: rope_parameters must be an object, not {rope!r}")
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise PyorthrusError(f"{source}: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported")

    def count(key: str, default=None) -> int:
        """A size or count: an integer the GGUF's 32-bit fields can hold (a checkpoint may come from anyone)."""
        value = hf.get(key, default)
        if value is None:
            raise PyorthrusError(f"{source}: missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise PyorthrusError(f"{source}: {key} must be a positive integer below 2^31, not {value!r}")
        return value

    def number(key: str, default: float) -> float:
        value = hf.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise PyorthrusError(f"{source}: {key} must be a positive number, not {value!r}")
        return float(value)

    def flag(key: str) -> bool:
        value = hf.get(key, False)
        if not isinstance(value, bool):
            raise PyorthrusError(f"{source}: {key} must be true or false, not {value!r}")
        return value

    heads, hidden, vocab = count("num_attention_heads"), count("hidden_size"), count("vocab_size")
    head_dim = count("head_dim") if hf.get("head_dim") is not None else hidden // heads
    if head_dim == 0:
        raise PyorthrusError(f"{source}: num_attention_heads {heads} exceeds hidden_size {hidden}")
    linear_layers = _linear_layers(hf, count("num_hidden_layers"), source) if base == QWEN35 else ()
    if base == QWEN35:  # the DeltaNet sizes (pyorthrus.qwen35_layout reads them)
        for key in ("conv_kernel_dim", "key_head_dim", "value_head_dim", "num_key_heads", "num_value_heads"):
            count(f"linear_{key}")
        if hf["linear_num_value_heads"] % hf["linear_num_key_heads"]:
            raise PyorthrusError(f"{source}: linear_num_value_heads {hf['linear_num_value_heads']} is not a multiple "
                                 f"of linear_num_key_heads {hf['linear_num_key_heads']}")
    mask = hf.get("mask_token_id")
    if mask is not None and (isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < vocab):
        raise PyorthrusError(f"{source}: mask_token_id must be a token id below vocab_size {vocab}, not {mask!r}")
    return OrthrusConfig(
        base=base,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=count("intermediate_size"),
        num_layers=count("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=count("num_key_value_heads", heads),
        head_dim=head_dim,
        rms_norm_eps=number("rms_norm_eps", 1e-6),
        rope_theta=number("rope_theta", rope.get("rope_theta", 10000.0)),
        tie_word_embeddings=flag("tie_word_embeddings"),
        attention_bias=flag("attention_bias"),
        block_size=count("block_size", 32),
        mask_token_id=mask,
        linear_layers=linear_layers,
    )


def _linear_layers(hf: dict, n_layers: int, source: str) -> tuple[int, ...]:
    """A Qwen3.5 config's Gated DeltaNet layers: `layer_types`, else every layer but each
    `full_attention_interval`-th (FULL_ATTENTION_INTERVAL by default), as transformers builds them."""
    types = hf.get("layer_types")
    if types is None:
        interval = hf.get("full_attention_interval", FULL_ATTENTION_INTERVAL[QWEN35])
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise PyorthrusError(f"{source}: full_attention_interval must be a positive integer, not {interval!r}")
        return tuple(i for i in range(n_layers) if (i + 1) % interval)
    if not isinstance(types, list) or len(types) != n_layers \
            or not set(types) <= {"linear_attention", "full_attention"}:
        raise PyorthrusError(f"{source}: layer_types must list 'linear_attention' or 'full_attention' for each of "
                             f"the {n_layers} layers")
    return tuple(i for i, kind in enumerate(types) if kind == "linear_attention")


def permute_qk_rows(weight, n_head: int):
    """llama.cpp's Llama converter layout: within each head, interleave the two RoPE halves (HF -> GGUF).
    Works on numpy arrays and torch tensors alike."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk_rows(weight, n_head: int):
    """Inverse of `permute_qk_rows` (GGUF -> HF)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_qk_permute_heads(cfg: OrthrusConfig, gguf_name: str) -> int:
    """Head count of the row permutation llama.cpp's Llama converter applies to this tensor (0: not permuted): Q and
    K weights and biases, the `_diff` ones alike."""
    if cfg.base != LLAMA:
        return 0
    tensor = gguf_name.split(".")[-2]
    if tensor in ("attn_q", "attn_q_diff"):
        return cfg.num_heads
    if tensor in ("attn_k", "attn_k_diff"):
        return cfg.num_kv_heads
    return 0
