"""PyTorch reference of both views of an Orthrus-Qwen3.5 checkpoint (issue 37), read from the reference's HF layout.

Written from the formulas of transformers' Qwen3.5 text model and of the reference's Orthrus-Qwen3.5 (docs/design.md,
"Hybrid models"), in float32, for agreement tests with llama.cpp and for the trainer:

- every norm but the DeltaNet output norm scales by (1 + w); the DeltaNet output norm is w * rmsnorm(core) * silu(z);
- a gated attention layer: q_proj gives each head's query followed by its gate; q/k norms, partial rotary embedding
  (text positions make Qwen3.5's interleaved M-RoPE a plain rotation of the first dims), softmax attention, output
  times sigmoid(gate), o_proj;
- a Gated DeltaNet layer: in_proj_qkv through a causal depthwise conv (kernel K, over the last K-1 inputs and the new
  ones) and SiLU; q, k l2-normalised, q scaled by dk^-0.5, key heads repeated to value heads (grouped); per token the
  state decays by exp(g), g = -exp(A_log) * softplus(a + dt_bias), and takes the delta rule with beta = sigmoid(b)
  (gated_delta_rule: computed a chunk of tokens at a time).

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
from .qwen35_layout import from_gguf, gguf_name, hf_name, hf_shape, layer_past


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
    """Both views of an Orthrus-Qwen3.5 checkpoint: forward_ar / forward_draft as pyorthrus.reference.OrthrusModel,
    and forward_drafts, the draft view over many blocks at once (the trainer's)."""

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

    def to(self, device) -> "Qwen35Reference":
        """Move the weights to `device` (caches follow the weights)."""
        self.w = {name: t.to(device) for name, t in self.w.items()}
        self.inv_freq = self.inv_freq.to(device)
        return self

    def new_cache(self) -> HybridCache:
        return HybridCache()

    def forward_ar(self, token_ids, cache: HybridCache) -> torch.Tensor:
        """Causal pass over token_ids after the cache; updates it. Returns logits [T, vocab]."""
        return self._forward(self._ids(token_ids)[None], [cache], diffusion=False)[0]

    def forward_draft(self, token_ids, cache: HybridCache) -> torch.Tensor:
        """The diffusion view over a block after the cache (which it leaves untouched). Returns logits [K, vocab]."""
        return self._forward(self._ids(token_ids)[None], [cache], diffusion=True)[0]

    def forward_drafts(self, blocks, caches: list[HybridCache]) -> torch.Tensor:
        """The diffusion view over B blocks of K tokens at once, block b after caches[b] (each left untouched), as
        B forward_draft calls compute them. Returns logits [B, K, vocab]."""
        return self._forward(self._ids(blocks).reshape(len(caches), -1), caches, diffusion=True)

    # -- the model ---------------------------------------------------------------------------------------------

    def _ids(self, token_ids) -> torch.Tensor:
        return torch.as_tensor(token_ids, dtype=torch.long, device=self.inv_freq.device)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Qwen3.5's RMSNorm: x / rms(x) * (1 + w)."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps) * (1.0 + self.w[name])

    def _forward(self, ids: torch.Tensor, caches: list[HybridCache], diffusion: bool) -> torch.Tensor:
        """ids [B, n], row b after caches[b]; the AR view takes one row (it writes its cache)."""
        if not diffusion and len(caches) != 1:
            raise ValueError("the AR view runs one sequence at a time")
        x = self.w["model.embed_tokens.weight"][ids]  # [B, n, hidden]
        past = torch.tensor([c.n_past for c in caches], device=ids.device)
        positions = past[:, None] + torch.arange(ids.shape[1], device=ids.device)
        for i in range(self.cfg.num_layers):
            p = f"model.layers.{i}."
            h = self._norm(x, p + "input_layernorm.weight")
            if i in self.cfg.linear_layers:
                x = x + self._deltanet(h, p + "linear_attn.", caches, i, diffusion)
            else:
                x = x + self._attention(h, p + "self_attn.", caches, i, positions, diffusion)
            h = self._norm(x, p + "post_attention_layernorm.weight")
            x = x + (self._experts(h, p + "mlp.") if p + "mlp.gate.weight" in self.w else self._mlp(h, p + "mlp."))
        if not diffusion:
            caches[0].n_past += ids.shape[1]
        x = self._norm(x, "model.norm.weight")
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return F.linear(x, head)

    def _mlp(self, h: torch.Tensor, p: str) -> torch.Tensor:
        gate, up = (F.linear(h, self.w[f"{p}{m}_proj.weight"]) for m in ("gate", "up"))
        return F.linear(F.silu(gate) * up, self.w[p + "down_proj.weight"])

    def _experts(self, h: torch.Tensor, p: str) -> torch.Tensor:
        """A qwen35moe layer's feed-forward: the routed experts, each token's num_experts_per_tok most probable
        under the router's softmax, weighted by those probabilities renormalised to sum to 1, plus the shared
        expert times sigmoid(its gate)."""
        flat = h.reshape(-1, h.shape[-1])
        probs = torch.softmax(F.linear(flat, self.w[p + "gate.weight"]), dim=-1)
        weight, index = probs.topk(self.hf["num_experts_per_tok"], dim=-1)
        weight = weight / weight.sum(-1, keepdim=True)
        gate, up, down = (self.w[f"{p}experts.{m}_proj.weight"] for m in ("gate", "up", "down"))
        out = torch.zeros_like(flat)
        for expert in index.unique().tolist():
            rows, slot = (index == expert).nonzero(as_tuple=True)
            x = flat[rows]
            y = F.linear(F.silu(F.linear(x, gate[expert])) * F.linear(x, up[expert]), down[expert])
            out = out.index_add(0, rows, y * weight[rows, slot, None])
        shared = torch.sigmoid(F.linear(flat, self.w[p + "shared_expert_gate.weight"])) * \
            self._mlp(flat, p + "shared_expert.")
        return (out + shared).reshape(h.shape)

    def _attention(self, h, p: str, caches: list[HybridCache], layer: int, positions, diffusion: bool):
        cfg, (b, n), twin = self.cfg, h.shape[:2], "_diff" if diffusion else ""
        w = lambda name: self.w[f"{p}{name}{twin}.weight"]  # noqa: E731
        q, gate = F.linear(h, w("q_proj")).view(b, n, cfg.num_heads, 2 * cfg.head_dim).chunk(2, dim=-1)
        k = F.linear(h, w("k_proj")).view(b, n, cfg.num_kv_heads, cfg.head_dim)
        v = F.linear(h, w("v_proj")).view(b, n, cfg.num_kv_heads, cfg.head_dim)
        q = self._rms(q) * (1.0 + w("q_norm"))
        k = self._rms(k) * (1.0 + w("k_norm"))
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, n, head_dim]
        # each row's cached keys, padded to the longest; `cached` marks the real ones
        lengths = [c.keys[layer].shape[1] if layer in c.keys else 0 for c in caches]
        longest = max(lengths)

        def prefix(stores: list[dict], new: torch.Tensor) -> torch.Tensor:  # [b, kv heads, longest, head_dim]
            empty = new.new_zeros(new.shape[1], 0, new.shape[3])
            return torch.stack([F.pad(store.get(layer, empty), (0, 0, 0, longest - m))
                                for store, m in zip(stores, lengths)])

        keys = torch.cat((prefix([c.keys for c in caches], k), k), dim=2)
        values = torch.cat((prefix([c.values for c in caches], v), v), dim=2)
        if not diffusion:
            caches[0].keys[layer], caches[0].values[layer] = keys[0], values[0]
        cached = torch.arange(longest, device=h.device)[None, :] < torch.tensor(lengths, device=h.device)[:, None]
        block = torch.ones(n, n, dtype=torch.bool, device=h.device)
        if not diffusion:  # the draft block sees itself whole
            block = block.tril()
        allowed = torch.cat((cached[:, None, :].expand(b, n, longest), block.expand(b, n, n)), dim=-1)
        group = cfg.num_heads // cfg.num_kv_heads
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        scores = (q @ keys.transpose(-1, -2)) * cfg.head_dim**-0.5
        probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1)
        out = (probs @ values).transpose(1, 2).reshape(b, n, -1) * torch.sigmoid(gate.reshape(b, n, -1))
        return F.linear(out, w("o_proj"))

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of the first rotary_dim dims of each head (halves rotated, as in HF); x [b, n, heads,
        head_dim], positions [b, n]."""
        angles = positions[..., None].float() * self.inv_freq
        angles = torch.cat((angles, angles), -1)[:, :, None]  # [b, n, 1 (heads), rotary_dim]
        cos, sin = angles.cos(), angles.sin()
        rot, keep = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        half = self.rotary_dim // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated * sin, keep), dim=-1)

    def _deltanet(self, h, p: str, caches: list[HybridCache], layer: int, diffusion: bool) -> torch.Tensor:
        hf, (b, n), twin = self.hf, h.shape[:2], "_diff" if diffusion else ""
        w = lambda name, suffix=".weight": self.w[f"{p}{name}{twin}{suffix}"]  # noqa: E731
        n_k, n_v = hf["linear_num_key_heads"], hf["linear_num_value_heads"]
        dk, dv, kernel = hf["linear_key_head_dim"], hf["linear_value_head_dim"], hf["linear_conv_kernel_dim"]
        mixed = F.linear(h, w("in_proj_qkv"))  # [b, n, channels]
        empty = mixed.new_zeros(kernel - 1, mixed.shape[-1])
        inputs = torch.cat((torch.stack([c.conv.get(layer, empty) for c in caches]), mixed), dim=1)
        conv = w("conv1d").reshape(mixed.shape[-1], kernel)  # [channels, K]: causal, depthwise
        mixed = F.silu(sum(inputs[:, j:j + n] * conv[:, j] for j in range(kernel)))
        q, k, v = mixed.split((n_k * dk, n_k * dk, n_v * dv), dim=-1)
        q, k, v = q.reshape(b, n, n_k, dk), k.reshape(b, n, n_k, dk), v.reshape(b, n, n_v, dv)
        q, k = (F.normalize(t, dim=-1, eps=1e-6) for t in (q, k))
        q, k = q.repeat_interleave(n_v // n_k, dim=2) * dk**-0.5, k.repeat_interleave(n_v // n_k, dim=2)
        beta = torch.sigmoid(F.linear(h, w("in_proj_b")))  # [b, n, value heads]
        g = -torch.exp(w("A_log", "")) * F.softplus(F.linear(h, w("in_proj_a")) + w("dt_bias", ""))
        start = mixed.new_zeros(n_v, dk, dv)
        state = torch.stack([c.state.get(layer, start) for c in caches])  # [b, value heads, dk, dv]
        heads_first = lambda t: t.transpose(1, 2)  # noqa: E731  [b, n, heads, ...] -> [b, heads, n, ...]
        core, state = gated_delta_rule(heads_first(q), heads_first(k), heads_first(v), heads_first(g),
                                       heads_first(beta), state)
        if not diffusion:
            caches[0].conv[layer], caches[0].state[layer] = inputs[0, -(kernel - 1):], state[0]
        z = F.linear(h, w("in_proj_z")).reshape(b, n, n_v, dv)
        core = self._rms(heads_first(core)) * w("norm") * F.silu(z)
        return F.linear(core.reshape(b, n, n_v * dv), w("out_proj"))


def gated_delta_rule(q, k, v, g, beta, state, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over n tokens from `state`, a chunk of tokens at a time; per token t (per head)
        S <- exp(g_t) S;  u_t = beta_t (v_t - S^T k_t);  S <- S + k_t u_t^T;  o_t = S^T q_t.
    Within a chunk, with G the cumulative sum of g and D[t, i] = exp(G_t - G_i) for i <= t, the u_t solve one unit
    lower-triangular system, (I + A) U = beta (V - exp(G) K S0) with A[t, i] = beta_t D[t, i] k_t.k_i for i < t;
    then O = exp(G) Q S0 + (Q K^T * D) U and S = exp(G_L) S0 + (K * exp(G_L - G))^T U. The same arithmetic as the
    per-token loop up to float32 rounding (1e-7 on unit-scale values), with no Python loop over tokens.
    q, k [..., n, dk]; v [..., n, dv]; g, beta [..., n]; state [..., dk, dv]. Returns o [..., n, dv] and the state."""
    outputs = []
    for begin in range(0, q.shape[-2], chunk):
        qc, kc, vc = (t[..., begin:begin + chunk, :] for t in (q, k, v))
        gc, bc = g[..., begin:begin + chunk], beta[..., begin:begin + chunk]
        size = qc.shape[-2]
        cum = gc.cumsum(-1)
        causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")))
        a = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)
        rhs = bc[..., None] * (vc - torch.exp(cum)[..., None] * (kc @ state))
        u = torch.linalg.solve_triangular(a + torch.eye(size, device=q.device), rhs, upper=False,
                                          unitriangular=True)
        outputs.append(torch.exp(cum)[..., None] * (qc @ state) + ((qc @ kc.transpose(-1, -2)) * decay) @ u)
        last = cum[..., -1:]
        state = torch.exp(last)[..., None] * state + (kc * torch.exp(last - cum)[..., None]).transpose(-1, -2) @ u
    return torch.cat(outputs, dim=-2), state


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
    copy_missing_twins(model, str(path))
    return model


def copy_missing_twins(model: Qwen35Reference, source: str, shown=lambda name: name) -> None:
    """Each twin the model was not given starts as a copy of its AR tensor, as the reference initialises them; an
    AR tensor missing too is named (shown(HF name): as the source names it) with its layer."""
    for twin in qwen35_twin_names(model.cfg):
        ar = hf_ar_name(twin)
        if ar not in model.w:
            raise PyorthrusError(f"{source}: no tensor {shown(ar)} (layer {twin.split('.')[2]}) for its twin")
        model.w.setdefault(twin, model.w[ar].clone())


def gguf_text_config(reader, source: str) -> dict:
    """The flat text config (transformers' keys, model_type "orthrus_qwen3_5") of a `qwen35` or `qwen35moe` GGUF,
    read from the keys llama.cpp's converter wrote; block_size and mask_token_id are the file's where it has them."""
    arch = gguf_field(reader, "general.architecture")
    if gguf_field(reader, "general.type") == "adapter":
        raise PyorthrusError(f"{source}: an Orthrus adapter, not a model (pass the base GGUF it goes with)")
    if arch not in ("qwen35", "qwen35moe"):
        raise PyorthrusError(f"{source}: architecture {arch!r}, expected 'qwen35' or 'qwen35moe'")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise PyorthrusError(f"{source}: no token_embd.weight; not a model file")

    def key(name: str, kind=int):
        """A size (a positive integer) or, kind=float, a positive number: anything else is a broken file."""
        value = gguf_field(reader, f"{arch}.{name}")
        if value is None:
            raise PyorthrusError(f"{source}: no {arch}.{name}")
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
            raise PyorthrusError(f"{source}: {arch}.{name} is {value!r}, not a positive "
                                 + ("number" if kind is float else "integer"))
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
        "intermediate_size": key("expert_feed_forward_length" if arch == "qwen35moe" and gguf_field(
            reader, f"{arch}.feed_forward_length") is None else "feed_forward_length"), "num_hidden_layers": n_layers,
        "num_attention_heads": heads, "num_key_value_heads": key("attention.head_count_kv"), "head_dim": head_dim,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", float),
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_parameters": {"rope_type": "default", "rope_theta": key("rope.freq_base", float),
                            "partial_rotary_factor": key("rope.dimension_count") / head_dim},
        "layer_types": ["linear_attention" if r else "full_attention" for r in recurrent],
        "linear_conv_kernel_dim": key("ssm.conv_kernel"), "linear_key_head_dim": key("ssm.state_size"),
        "linear_num_key_heads": key("ssm.group_count"), "linear_num_value_heads": value_heads,
        "linear_value_head_dim": key("ssm.inner_size") // value_heads}
    if arch == "qwen35moe":
        config.update(num_experts=key("expert_count"), num_experts_per_tok=key("expert_used_count"),
                      moe_intermediate_size=key("expert_feed_forward_length"),
                      shared_expert_intermediate_size=key("expert_shared_feed_forward_length"))
        if gguf_field(reader, f"{arch}.expert_weights_scale", 0.0) not in (0.0, 1.0):
            raise PyorthrusError(f"{source}: {arch}.expert_weights_scale is not 1: the reference does not scale "
                                 "expert weights")
    for hf_key, gguf_key in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                             ("eos_token_id", "tokenizer.ggml.eos_token_id"), ("mask_token_id", KEY_MASK_TOKEN_ID),
                             ("block_size", KEY_BLOCK_SIZE.format(arch=arch))):
        if gguf_field(reader, gguf_key) is not None:
            config[hf_key] = int(gguf_field(reader, gguf_key))
    config_from_hf(config, source)  # what it refuses, refused before any tensor is read
    return config


def hf_tensors(reader, hf: dict) -> dict[str, torch.Tensor]:
    """The tensors of an open `qwen35`/`qwen35moe` GGUF (a model, merged or plain, or an adapter), dequantized to
    float32 and brought back to transformers' layout and names (qwen35_layout.from_gguf; twins under their `_diff`
    names); the MTP head's tensors are left out (neither view uses them). hf: the model's text config."""
    from .reference import gguf_tensor_f32

    tensors = {}
    for tensor in reader.tensors:
        ar_name = hf_ar_name(tensor.name)
        if layer_past(ar_name, hf["num_hidden_layers"]):
            continue
        if hf_name(ar_name) is None:
            raise PyorthrusError(f"{reader.data.filename}: unexpected tensor {tensor.name}")
        stored, want = gguf_tensor_f32(tensor), hf_shape(hf_name(ar_name), hf)
        try:
            name, value = from_gguf(ar_name, stored, hf)
        except (ValueError, IndexError):  # a shape the layout's reshapes cannot take
            name, value = None, stored
        if value.shape != want:
            raise PyorthrusError(f"{reader.data.filename}: tensor {tensor.name} has shape {list(stored.shape)}, "
                                 f"its file's keys give {list(want)} (in transformers' layout)")
        tensors[twin_name(name) if ar_name != tensor.name else name] = torch.from_numpy(value)
    return tensors


def load_gguf(path, adapter=None, reader=None) -> Qwen35Reference:
    """Both views of a `qwen35`/`qwen35moe` GGUF (any quantization, dequantized to float32), with an Orthrus
    adapter file's twins if one is given (hf_tensors). Twins the files do not hold start as copies of their AR
    tensors, as the reference initialises them. reader: the GGUF at `path`, already open."""
    reader = reader or open_reader(path)
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
    tensors = {name: t for source in readers for name, t in hf_tensors(source, hf).items()}
    model = Qwen35Reference(hf, tensors, str(path))
    copy_missing_twins(model, str(path), gguf_name)
    return model
