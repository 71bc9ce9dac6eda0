"""PyTorch reference of both views of an Orthrus-Qwen3.5 checkpoint (issue 37), read from the reference's HF layout.

Written from the formulas of transformers' Qwen3.5 text model and of the reference's Orthrus-Qwen3.5 (docs/design.md,
"Hybrid models"), in float32, one token at a time where the model is recurrent, for agreement tests with llama.cpp:

- every norm but the DeltaNet output norm scales by (1 + w); the DeltaNet output norm is w * rmsnorm(core) * silu(z);
- a gated attention layer: q_proj gives each head's query followed by its gate; q/k norms, partial rotary embedding
  (text positions make Qwen3.5's interleaved M-RoPE a plain rotation of the first dims), softmax attention, output
  times sigmoid(gate), o_proj;
- a Gated DeltaNet layer: in_proj_qkv through a causal depthwise conv (kernel K, over the last K-1 inputs and the new
  ones) and SiLU; q, k l2-normalised, q scaled by dk^-0.5, key heads repeated to value heads (grouped); per token the
  state decays by exp(g), g = -exp(A_log) * softplus(a + dt_bias), and takes the delta rule with beta = sigmoid(b).

The draft view runs the `_diff` twins over a block [x, MASK...]: attention twins see the cached AR keys and the
whole block; DeltaNet twins run causally from the cached conv window and state. It changes no cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import PyorthrusError
from .formats import (CHECKPOINT_MODEL_TYPES, KEY_ADAPTER_BLOCK_SIZE, KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID, QWEN35,
                      config_from_hf, hf_ar_name, qwen35_twin_names, twin_name)
from .gguf_meta import adapter_fit, fit_error, gguf_field, open_reader
from .qwen35_layout import from_gguf, gguf_name, hf_name


# transformers' Qwen3.5 checkpoints: multimodal (the text model's config under text_config, its tensors under
# model.language_model.) or text-only
QWEN35_BASE_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")


@dataclass
class HybridCache:
    """The AR view's memory: per attention layer its keys/values [heads, positions, head_dim] (after norm and
    rotation); per DeltaNet layer the last K-1 conv inputs [K-1, channels] and the state [value heads, dk, dv]."""

    n_past: int = 0
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    conv: dict[int, torch.Tensor] = field(default_factory=dict)
    state: dict[int, torch.Tensor] = field(default_factory=dict)

    def copy(self) -> "HybridCache":
        """The cache as it is now: a pass replaces its tensors and never changes one in place, so they are shared."""
        return HybridCache(self.n_past, dict(self.keys), dict(self.values), dict(self.conv), dict(self.state))


class Qwen35Reference:
    """Both views of an Orthrus-Qwen3.5 checkpoint: forward_ar / forward_draft as pyorthrus.reference.OrthrusModel."""

    def __init__(self, hf_config: dict, tensors: dict[str, torch.Tensor], source: str = "config.json"):
        self.cfg = config_from_hf(hf_config, source)
        if self.cfg.base != QWEN35:
            raise PyorthrusError(f"{source}: not an Orthrus-Qwen3.5 checkpoint (base {self.cfg.base})")
        self.hf = hf_config
        self.w = {name: t.float() for name, t in tensors.items()}
        rope = hf_config.get("rope_parameters") or {}
        self.rotary_dim = int(self.cfg.head_dim * rope.get("partial_rotary_factor", 0.25))
        theta = rope.get("rope_theta", 1e7)
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float32) / self.rotary_dim)

    def new_cache(self) -> HybridCache:
        return HybridCache()

    def forward_ar(self, token_ids, cache: HybridCache) -> torch.Tensor:
        """Causal pass over token_ids after the cache; updates it. Returns logits [T, vocab]."""
        return self._forward(token_ids, cache, diffusion=False)

    def forward_draft(self, token_ids, cache: HybridCache) -> torch.Tensor:
        """The diffusion view over a block after the cache (which it leaves untouched). Returns logits [K, vocab]."""
        return self._forward(token_ids, cache, diffusion=True)

    # -- the model ---------------------------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Qwen3.5's RMSNorm: x / rms(x) * (1 + w)."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps) * (1.0 + self.w[name])

    def _forward(self, token_ids, cache: HybridCache, diffusion: bool) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        x = self.w["model.embed_tokens.weight"][ids]
        positions = torch.arange(cache.n_past, cache.n_past + ids.numel())
        for i in range(self.cfg.num_layers):
            p = f"model.layers.{i}."
            h = self._norm(x, p + "input_layernorm.weight")
            if i in self.cfg.linear_layers:
                x = x + self._deltanet(h, p + "linear_attn.", cache, i, diffusion)
            else:
                x = x + self._attention(h, p + "self_attn.", cache, i, positions, diffusion)
            h = self._norm(x, p + "post_attention_layernorm.weight")
            gate, up = (F.linear(h, self.w[p + f"mlp.{m}_proj.weight"]) for m in ("gate", "up"))
            x = x + F.linear(F.silu(gate) * up, self.w[p + "mlp.down_proj.weight"])
        if not diffusion:
            cache.n_past += ids.numel()
        x = self._norm(x, "model.norm.weight")
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return F.linear(x, head)

    def _attention(self, h, p: str, cache: HybridCache, layer: int, positions, diffusion: bool) -> torch.Tensor:
        cfg, n, twin = self.cfg, h.shape[0], "_diff" if diffusion else ""
        w = lambda name: self.w[f"{p}{name}{twin}.weight"]  # noqa: E731
        q, gate = F.linear(h, w("q_proj")).view(n, cfg.num_heads, 2 * cfg.head_dim).chunk(2, dim=-1)
        k = F.linear(h, w("k_proj")).view(n, cfg.num_kv_heads, cfg.head_dim)
        v = F.linear(h, w("v_proj")).view(n, cfg.num_kv_heads, cfg.head_dim)
        q = self._rms(q) * (1.0 + w("q_norm"))
        k = self._rms(k) * (1.0 + w("k_norm"))
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, n, head_dim]
        keys = torch.cat((cache.keys[layer], k), dim=1) if layer in cache.keys else k
        values = torch.cat((cache.values[layer], v), dim=1) if layer in cache.values else v
        if not diffusion:
            cache.keys[layer], cache.values[layer] = keys, values
        start = keys.shape[1] - n
        allowed = torch.ones(n, keys.shape[1], dtype=torch.bool)
        if not diffusion:  # the draft block sees itself whole
            allowed[:, start:] = torch.ones(n, n, dtype=torch.bool).tril()
        group = cfg.num_heads // cfg.num_kv_heads
        keys, values = keys.repeat_interleave(group, dim=0), values.repeat_interleave(group, dim=0)
        scores = (q @ keys.transpose(1, 2)) * cfg.head_dim**-0.5
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out = (probs @ values).transpose(0, 1).reshape(n, -1) * torch.sigmoid(gate.reshape(n, -1))
        return F.linear(out, w("o_proj"))

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of the first rotary_dim dims of each head (halves rotated, as in HF)."""
        angles = positions[:, None].float() * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), -1)[:, None]  # [n, 1 (heads), rotary_dim]
        cos, sin = angles.cos(), angles.sin()
        rot, keep = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        half = self.rotary_dim // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated * sin, keep), dim=-1)

    def _deltanet(self, h, p: str, cache: HybridCache, layer: int, diffusion: bool) -> torch.Tensor:
        hf, n, twin = self.hf, h.shape[0], "_diff" if diffusion else ""
        w = lambda name, suffix=".weight": self.w[f"{p}{name}{twin}{suffix}"]  # noqa: E731
        n_k, n_v = hf["linear_num_key_heads"], hf["linear_num_value_heads"]
        dk, dv, kernel = hf["linear_key_head_dim"], hf["linear_value_head_dim"], hf["linear_conv_kernel_dim"]
        mixed = F.linear(h, w("in_proj_qkv"))  # [n, channels]
        window = cache.conv.get(layer, torch.zeros(kernel - 1, mixed.shape[1]))
        inputs = torch.cat((window, mixed), dim=0)
        conv = w("conv1d").reshape(mixed.shape[1], kernel)  # [channels, K]
        mixed = F.silu(torch.stack([(inputs[t:t + kernel] * conv.T).sum(0) for t in range(n)]))
        q, k, v = mixed.split((n_k * dk, n_k * dk, n_v * dv), dim=-1)
        q, k, v = q.reshape(n, n_k, dk), k.reshape(n, n_k, dk), v.reshape(n, n_v, dv)
        q, k = (F.normalize(t, dim=-1, eps=1e-6) for t in (q, k))
        q, k = q.repeat_interleave(n_v // n_k, dim=1) * dk**-0.5, k.repeat_interleave(n_v // n_k, dim=1)
        beta = torch.sigmoid(F.linear(h, w("in_proj_b")))  # [n, value heads]
        g = -torch.exp(w("A_log", "")) * F.softplus(F.linear(h, w("in_proj_a")) + w("dt_bias", ""))
        state = cache.state.get(layer, torch.zeros(n_v, dk, dv))
        core = []
        for t in range(n):
            state = state * torch.exp(g[t])[:, None, None]
            delta = (v[t] - (state * k[t][:, :, None]).sum(1)) * beta[t][:, None]
            state = state + k[t][:, :, None] * delta[:, None, :]
            core.append((state * q[t][:, :, None]).sum(1))
        if not diffusion:
            cache.conv[layer], cache.state[layer] = inputs[-(kernel - 1):], state
        z = F.linear(h, w("in_proj_z")).reshape(n, n_v, dv)
        core = self._rms(torch.stack(core)) * w("norm") * F.silu(z)
        return F.linear(core.reshape(n, n_v * dv), w("out_proj"))


def load_checkpoint(path) -> Qwen35Reference:
    """The reference model of an Orthrus-Qwen3.5 checkpoint directory (config.json + safetensors)."""
    import json

    from .reference import read_hf_tensors

    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    if CHECKPOINT_MODEL_TYPES.get(hf_config.get("model_type")) != QWEN35:
        raise PyorthrusError(f"{path / 'config.json'}: not an Orthrus-Qwen3.5 checkpoint "
                             f"(model_type {hf_config.get('model_type')!r})")
    return Qwen35Reference(hf_config, read_hf_tensors(path), str(path / "config.json"))


def base_text_config(path) -> dict:
    """The text model's config of a plain Qwen3.5 checkpoint directory: config.json itself (text-only), or its
    text_config (multimodal), tie_word_embeddings taken from the top level where the text config has none."""
    import json

    hf = json.loads((Path(path) / "config.json").read_text())
    if hf.get("model_type") != "qwen3_5":
        return hf
    text = hf.get("text_config", hf)
    return {**text, "tie_word_embeddings": text.get("tie_word_embeddings", hf.get("tie_word_embeddings", False))}


def orthrus_from_base(path, block_size: int, mask_token_id: int) -> Qwen35Reference:
    """An Orthrus-Qwen3.5 model made from a plain Qwen3.5 checkpoint directory as the reference initialises one:
    the text model's config, flat, with model_type "orthrus_qwen3_5", block_size and mask_token_id; its tensors
    under the text model's names (the vision tower and the MTP head left out: neither view uses them); each twin a
    copy of its AR tensor."""
    from .reference import read_hf_tensors

    path = Path(path)
    flat = {**base_text_config(path), "model_type": "orthrus_qwen3_5",
            "architectures": ["OrthrusQwen3_5ForCausalLM"], "block_size": int(block_size),
            "mask_token_id": int(mask_token_id)}
    tensors = {}
    for name, tensor in read_hf_tensors(path).items():
        name = name.replace("model.language_model.", "model.", 1)
        if name.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")):
            tensors[name] = tensor
    model = Qwen35Reference(flat, tensors, str(path / "config.json"))
    for twin in qwen35_twin_names(model.cfg):
        if hf_ar_name(twin) not in model.w:
            raise PyorthrusError(f"{path}: no tensor {hf_ar_name(twin)} (layer {twin.split('.')[2]}) for its twin")
        model.w[twin] = model.w[hf_ar_name(twin)].clone()
    return model


def gguf_text_config(reader, source: str) -> dict:
    """The flat text config (transformers' keys, model_type "orthrus_qwen3_5") of a `qwen35` GGUF, read from the
    keys llama.cpp's converter wrote; block_size and mask_token_id are the file's where it has them."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "qwen35":
        raise PyorthrusError(f"{source}: architecture {arch!r}, expected 'qwen35'"
                             + (" (the PyTorch reference has no routed experts)" if arch == "qwen35moe" else ""))
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise PyorthrusError(f"{source}: no token_embd.weight; not a model file")

    def key(name: str, default=None):
        value = gguf_field(reader, f"{arch}.{name}", default)
        if value is None:
            raise PyorthrusError(f"{source}: no {arch}.{name}")
        return value

    n_layers, heads, head_dim = key("block_count"), key("attention.head_count"), key("attention.key_length")
    recurrent = gguf_field(reader, f"{arch}.attention.recurrent_layers")
    if recurrent is None:
        interval = key("full_attention_interval")
        recurrent = [(i + 1) % interval != 0 for i in range(n_layers)]
    value_heads = key("ssm.time_step_rank")
    config = {
        "model_type": "orthrus_qwen3_5", "architectures": ["OrthrusQwen3_5ForCausalLM"],
        "vocab_size": int(tensors["token_embd.weight"].shape[1]), "hidden_size": key("embedding_length"),
        "intermediate_size": key("feed_forward_length"), "num_hidden_layers": n_layers,
        "num_attention_heads": heads, "num_key_value_heads": key("attention.head_count_kv"), "head_dim": head_dim,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_parameters": {"rope_type": "default", "rope_theta": key("rope.freq_base"),
                            "partial_rotary_factor": key("rope.dimension_count") / head_dim},
        "layer_types": ["linear_attention" if r else "full_attention" for r in recurrent],
        "linear_conv_kernel_dim": key("ssm.conv_kernel"), "linear_key_head_dim": key("ssm.state_size"),
        "linear_num_key_heads": key("ssm.group_count"), "linear_num_value_heads": value_heads,
        "linear_value_head_dim": key("ssm.inner_size") // value_heads}
    for hf_key, gguf_key in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                             ("eos_token_id", "tokenizer.ggml.eos_token_id"), ("mask_token_id", KEY_MASK_TOKEN_ID),
                             ("block_size", KEY_BLOCK_SIZE.format(arch=arch))):
        if gguf_field(reader, gguf_key) is not None:
            config[hf_key] = int(gguf_field(reader, gguf_key))
    return config


def load_gguf(path, adapter=None) -> Qwen35Reference:
    """Both views of a `qwen35` GGUF (any quantization, dequantized to float32), with an Orthrus adapter file's
    twins if one is given: each tensor brought back to transformers' layout (qwen35_layout.from_gguf). Twins the
    files do not hold start as copies of their AR tensors, as the reference initialises them; the MTP head's
    tensors are left out (neither view uses them)."""
    from .reference import gguf_tensor_f32

    reader = open_reader(path)
    hf = gguf_text_config(reader, str(path))
    readers = [reader]
    if adapter is not None:
        readers.append(open_reader(adapter))
        mismatch = fit_error(adapter_fit(reader, readers[1]))
        if mismatch:
            raise PyorthrusError(mismatch)
        for hf_key, gguf_key in (("mask_token_id", KEY_MASK_TOKEN_ID), ("block_size", KEY_ADAPTER_BLOCK_SIZE)):
            if gguf_field(readers[1], gguf_key) is not None:
                hf[hf_key] = int(gguf_field(readers[1], gguf_key))
    tensors = {}
    for source in readers:
        for tensor in source.tensors:
            ar_name = hf_ar_name(tensor.name)
            if ar_name.startswith("blk.") and int(ar_name.split(".")[1]) >= hf["num_hidden_layers"]:
                continue  # the MTP head
            if hf_name(ar_name) is None:
                raise PyorthrusError(f"{source.data.filename}: unexpected tensor {tensor.name}")
            name, value = from_gguf(ar_name, gguf_tensor_f32(tensor), hf)
            tensors[twin_name(name) if ar_name != tensor.name else name] = torch.from_numpy(value)
    model = Qwen35Reference(hf, tensors, str(path))
    for twin in qwen35_twin_names(model.cfg):
        if hf_ar_name(twin) not in model.w:
            raise PyorthrusError(f"{path}: no tensor {gguf_name(hf_ar_name(twin))} for layer {twin.split('.')[2]}")
        model.w.setdefault(twin, model.w[hf_ar_name(twin)].clone())
    return model
