"""A Qwen3.5 text model's tensors in transformers' layout and in llama.cpp's, both ways (issue 37): to_gguf gives a
tensor as the vendored convert_hf_to_gguf.py writes it (Qwen3_5TextModel and the classes it builds on), from_gguf
undoes that, so a Qwen3.5 GGUF can be trained from and trained twins become adapter tensors without llama.cpp's
converter. numpy only: converting needs no torch.

The transforms, per tensor (HF name after `model.layers.N.` -> GGUF name after `blk.N.`, see LAYER_NAMES):
- names as in LAYER_NAMES and GLOBAL_NAMES;
- Qwen3.5's RMSNorms scale by (1 + w) and llama.cpp's by w, so the GGUF stores 1 + w (OFFSET_NORMS); the DeltaNet
  output norm is a plain w in both;
- A_log becomes ssm_a = -exp(A_log) (rounded from float64: torch's float32 exp, which the converter uses, is not
  correctly rounded, so a value may differ from the converter's in its last bit); the conv kernel drops its middle
  axis of 1, and so does a MoE layer's shared-expert gate;
- where a DeltaNet layer has fewer key heads than value heads, its value heads go from grouped order (each key
  head's value heads together) to tiled order (one value head of each key head in turn), on the value part of every
  axis that runs over value heads (value_head_axis).
"""
from __future__ import annotations

import numpy as np

GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "linear_attn.in_proj_qkv.weight": "attn_qkv.weight", "linear_attn.in_proj_z.weight": "attn_gate.weight",
    "linear_attn.in_proj_b.weight": "ssm_beta.weight", "linear_attn.in_proj_a.weight": "ssm_alpha.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight", "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a", "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
    # qwen35moe: the router, the routed experts (under the names llama.cpp's converter stacks them to) and the
    # shared expert with its gate
    "mlp.gate.weight": "ffn_gate_inp.weight", "mlp.experts.gate_proj.weight": "ffn_gate_exps.weight",
    "mlp.experts.up_proj.weight": "ffn_up_exps.weight", "mlp.experts.down_proj.weight": "ffn_down_exps.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight"}
OFFSET_NORMS = ("attn_norm.weight", "post_attention_norm.weight", "attn_q_norm.weight", "attn_k_norm.weight",
                "output_norm.weight")
_HF_NAMES = {gguf: hf for hf, gguf in LAYER_NAMES.items()}
_HF_GLOBAL_NAMES = {gguf: hf for hf, gguf in GLOBAL_NAMES.items()}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of an HF tensor: model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    _, _, layer, suffix = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[suffix]}"


def hf_name(name: str) -> str | None:
    """The HF name of a llama.cpp tensor name (gguf_name's inverse); None for a tensor no view of this model
    uses (the MTP head's, say)."""
    if name in _HF_GLOBAL_NAMES:
        return _HF_GLOBAL_NAMES[name]
    blk, layer, suffix = name.split(".", 2) if name.startswith("blk.") else ("", "", "")
    return f"model.layers.{layer}.{_HF_NAMES[suffix]}" if suffix in _HF_NAMES else None


def mixer_shapes(hp: dict) -> dict[str, tuple[int, ...]]:
    """The HF shape of each attention and DeltaNet tensor (LAYER_NAMES' keys under self_attn./linear_attn.), from
    the text model's config: what each of an Orthrus-Qwen3.5 checkpoint's twins must have."""
    hidden, heads = hp["hidden_size"], hp["num_attention_heads"]
    kv_heads, head_dim = hp.get("num_key_value_heads", heads), hp.get("head_dim") or hidden // heads
    n_k, n_v, dk, dv = (hp[f"linear_{key}"] for key in ("num_key_heads", "num_value_heads", "key_head_dim",
                                                         "value_head_dim"))
    channels = 2 * n_k * dk + n_v * dv
    return {"self_attn.q_proj.weight": (2 * heads * head_dim, hidden),  # each head's query, then its gate
            "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            "self_attn.o_proj.weight": (hidden, heads * head_dim),
            "self_attn.q_norm.weight": (head_dim,), "self_attn.k_norm.weight": (head_dim,),
            "linear_attn.in_proj_qkv.weight": (channels, hidden), "linear_attn.in_proj_z.weight": (n_v * dv, hidden),
            "linear_attn.in_proj_b.weight": (n_v, hidden), "linear_attn.in_proj_a.weight": (n_v, hidden),
            "linear_attn.conv1d.weight": (channels, 1, hp["linear_conv_kernel_dim"]),
            "linear_attn.dt_bias": (n_v,), "linear_attn.A_log": (n_v,), "linear_attn.norm.weight": (dv,),
            "linear_attn.out_proj.weight": (hidden, n_v * dv)}


def hf_shape(name: str, hp: dict) -> tuple[int, ...]:
    """The HF shape the config gives any tensor of a Qwen3.5 text model, dense or MoE (by its HF name; a twin as its
    AR tensor)."""
    hidden, vocab, ffn = hp["hidden_size"], hp["vocab_size"], hp["intermediate_size"]
    fixed = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
             "model.norm.weight": (hidden,)}
    if name in fixed:
        return fixed[name]
    suffix = name.split(".", 3)[3]
    stem, _, kind = suffix.rpartition(".")
    suffix = f"{stem.removesuffix('_diff')}.{kind}" if kind in ("weight", "bias") else suffix.removesuffix("_diff")
    experts, expert_ffn, shared_ffn = (hp.get(key, 0) for key in ("num_experts", "moe_intermediate_size",
                                                                  "shared_expert_intermediate_size"))
    return {"input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
            "mlp.gate_proj.weight": (ffn, hidden), "mlp.up_proj.weight": (ffn, hidden),
            "mlp.down_proj.weight": (hidden, ffn), "mlp.gate.weight": (experts, hidden),
            "mlp.experts.gate_proj.weight": (experts, expert_ffn, hidden),
            "mlp.experts.up_proj.weight": (experts, expert_ffn, hidden),
            "mlp.experts.down_proj.weight": (experts, hidden, expert_ffn),
            "mlp.shared_expert.gate_proj.weight": (shared_ffn, hidden),
            "mlp.shared_expert.up_proj.weight": (shared_ffn, hidden),
            "mlp.shared_expert.down_proj.weight": (hidden, shared_ffn), "mlp.shared_expert_gate.weight": (1, hidden),
            **mixer_shapes(hp)}[suffix]


def value_head_axis(suffix: str, hp: dict) -> tuple[int, int, int] | None:
    """Where a GGUF tensor (`suffix` after blk.N.) runs over value heads, in its HF shape: (axis, first index of
    the value part, size per value head); None where it does not or where llama.cpp leaves the order alone (as
    many key heads as value heads)."""
    n_k, n_v = hp["linear_num_key_heads"], hp["linear_num_value_heads"]
    if n_k == n_v:
        return None
    qk_channels, dv = 2 * n_k * hp["linear_key_head_dim"], hp["linear_value_head_dim"]
    return {"attn_qkv.weight": (0, qk_channels, dv), "ssm_conv1d.weight": (0, qk_channels, dv),
            "attn_gate.weight": (0, 0, dv), "ssm_beta.weight": (0, 0, 1), "ssm_alpha.weight": (0, 0, 1),
            "ssm_dt.bias": (0, 0, 1), "ssm_a": (0, 0, 1), "ssm_out.weight": (1, 0, dv)}.get(suffix)


def _reorder_value_heads(x: np.ndarray, where: tuple[int, int, int], hp: dict, tiled: bool) -> np.ndarray:
    """The value part of axis `where[0]`, grouped -> tiled (tiled=True) or back."""
    axis, start, unit = where
    n_k, per_k = hp["linear_num_key_heads"], hp["linear_num_value_heads"] // hp["linear_num_key_heads"]
    x = np.moveaxis(x, axis, 0)
    head, part = x[:start], x[start:]
    groups = (n_k, per_k) if tiled else (per_k, n_k)
    part = part.reshape(*groups, unit, *part.shape[1:]).swapaxes(0, 1).reshape(part.shape)
    return np.moveaxis(np.concatenate((head, part)), 0, axis)


def gguf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The numpy shape llama.cpp's converter gives an HF tensor (by its HF name) of `shape`: the conv kernel and a
    MoE layer's shared-expert gate lose their axis of 1, the rest keep theirs."""
    if name.endswith("linear_attn.conv1d.weight"):
        return shape[0], shape[-1]
    if name.endswith("mlp.shared_expert_gate.weight"):
        return shape[-1],
    return tuple(shape)


def layer_past(name: str, n_layers: int) -> bool:
    """Whether a GGUF tensor is in a layer past the model's `n_layers` (the MTP head's, which neither view uses)."""
    index = name.split(".")[1] if name.startswith("blk.") else ""
    return index.isdigit() and int(index) >= n_layers


def to_gguf(name: str, value: np.ndarray, hp: dict) -> tuple[str, np.ndarray]:
    """An HF tensor (float32) as llama.cpp's converter writes it: (its GGUF name, its values in numpy order).
    hp: the text model's config (transformers' keys)."""
    out_name = gguf_name(name)
    suffix = out_name.split(".", 2)[-1] if out_name.startswith("blk.") else out_name
    value = np.asarray(value, dtype=np.float32)
    value = value.reshape(gguf_shape(name, value.shape))
    if (where := value_head_axis(suffix, hp)) is not None:
        value = _reorder_value_heads(value, where, hp, tiled=True)
    if suffix == "ssm_a":
        value = (-np.exp(value.astype(np.float64))).astype(np.float32)
    elif suffix in OFFSET_NORMS:
        value = value + np.float32(1)
    return out_name, np.ascontiguousarray(value)


def from_gguf(name: str, value: np.ndarray, hp: dict) -> tuple[str, np.ndarray]:
    """to_gguf's inverse: a GGUF tensor (float32, numpy order) as (its HF name, its HF values); raises KeyError for
    a name hf_name does not know."""
    out_name = hf_name(name)
    if out_name is None:
        raise KeyError(name)
    suffix = name.split(".", 2)[-1] if name.startswith("blk.") else name
    value = np.asarray(value, dtype=np.float32)
    if suffix == "ssm_a":
        value = np.log(-value.astype(np.float64)).astype(np.float32)
    elif suffix in OFFSET_NORMS:
        value = value - np.float32(1)
    if (where := value_head_axis(suffix, hp)) is not None:
        value = _reorder_value_heads(value, where, hp, tiled=False)
    if suffix == "ssm_conv1d.weight":
        value = value.reshape(value.shape[0], 1, value.shape[1])
    elif suffix == "ffn_gate_inp_shexp.weight":
        value = value.reshape(1, -1)
    return out_name, np.ascontiguousarray(value)
