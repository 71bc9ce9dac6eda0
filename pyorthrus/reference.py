"""Readable PyTorch reference of an Orthrus model (docs/design.md, "Algorithm"): both views, decoding, loaders.

This is the ground truth the llama.cpp patches are tested against, so it favours clarity over speed: eager
attention, one sequence, float32 by default. Supported bases: Qwen3 (q/k RMSNorm over head_dim) and Llama (no q/k
norms); attention biases are used wherever the checkpoint has them (Qwen2-style bases).

Decoding state follows the spec: the cache holds AR K/V of positions < s; the token x_s at position s is known but
not cached yet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import PyorthrusError
from .formats import (ATTENTION_PROJECTIONS, GGUF_ARCH_TO_BASE, LLAMA, QK_NORMS, QWEN3, QWEN35, SUPPORTED_BASES,  # noqa: F401
                      KEY_ADAPTER_BLOCK_SIZE, KEY_BLOCK_SIZE, KEY_MASK_TOKEN_ID, OrthrusConfig, config_from_hf,
                      llama_qk_permute_heads, permute_qk_rows, unpermute_qk_rows)
from .gguf_meta import adapter_fit, fit_error, gguf_field, open_reader
from .sampling import sampling_distribution


# ---------------------------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the model dtype, as transformers does.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class AttentionWeights(nn.Module):
    """One set of attention projections: the AR set or the diffusion (`_diff`) set of a layer."""

    def __init__(self, cfg: OrthrusConfig):
        super().__init__()
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        biased = cfg.biased_projections
        self.q_proj = nn.Linear(cfg.hidden_size, q_out, bias="q_proj" in biased)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_out, bias="k_proj" in biased)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_out, bias="v_proj" in biased)
        self.o_proj = nn.Linear(q_out, cfg.hidden_size, bias="o_proj" in biased)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.has_qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.has_qk_norm else None


class MLP(nn.Module):
    def __init__(self, cfg: OrthrusConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: OrthrusConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = AttentionWeights(cfg)
        self.attn_diff = AttentionWeights(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


@dataclass
class KVCache:
    """AR keys/values per layer, each [num_kv_heads, positions, head_dim] (after k-norm and RoPE)."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[1]

    def crop(self, n: int) -> None:
        """Keep positions < n."""
        self.keys = [k[:, :n] for k in self.keys]
        self.values = [v[:, :n] for v in self.values]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class OrthrusModel(nn.Module):
    """A base decoder plus the per-layer diffusion attention weights."""

    def __init__(self, cfg: OrthrusConfig, dtype: torch.dtype = torch.float32):
        if cfg.base == QWEN35:
            raise PyorthrusError("the PyTorch reference does not cover qwen35 (Qwen3.5 / Qwen3.6) bases yet")
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.to(dtype)
        # A plain attribute, not a buffer: RoPE frequencies stay float32 whatever the model dtype (as in HF).
        self.inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))

    # -- the two views ---------------------------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward_ar(self, token_ids, cache: KVCache) -> torch.Tensor:
        """Causal pass over `token_ids` at positions len(cache)...; appends their K/V. Returns logits [T, vocab]."""
        return self._forward(token_ids, cache, diffusion=False)

    def forward_draft(self, token_ids, cache: KVCache) -> torch.Tensor:
        """Diffusion pass over a block at positions len(cache)...: `_diff` weights, the block attends to every cached
        AR K/V and to itself bidirectionally. The cache is left untouched. Returns logits [K, vocab]."""
        return self._forward(token_ids, cache, diffusion=True)

    def _forward(self, token_ids, cache: KVCache, diffusion: bool) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        start, n = len(cache), ids.numel()
        positions = torch.arange(start, start + n)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed_tokens.weight.dtype
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        # Row i (position start+i) may see cached cells and block cells j <= i (AR) or every block cell (draft).
        allowed = torch.ones(n, start + n, dtype=torch.bool)
        if not diffusion:
            allowed[:, start:] = torch.ones(n, n, dtype=torch.bool).tril()
        mask = torch.zeros(n, start + n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)

        x = self.embed_tokens(ids)
        for index, layer in enumerate(self.layers):
            weights = layer.attn_diff if diffusion else layer.attn
            k_new, v_new, attn_out = self._attention(layer.input_layernorm(x), weights, cache, index, cos, sin, mask)
            if not diffusion:
                self._append(cache, index, k_new, v_new)
            x = x + attn_out
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.norm(x)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return nn.functional.linear(x, head)

    def _attention(self, h, w: AttentionWeights, cache: KVCache, index: int, cos, sin, mask):
        cfg, n = self.cfg, h.shape[0]
        q = w.q_proj(h).view(n, cfg.num_heads, cfg.head_dim)
        k = w.k_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim)
        v = w.v_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim)
        if w.q_norm is not None:
            q, k = w.q_norm(q), w.k_norm(k)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, n, head_dim]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if index < len(cache.keys):
            keys, values = torch.cat((cache.keys[index], k), dim=1), torch.cat((cache.values[index], v), dim=1)
        else:
            keys, values = k, v
        group = cfg.num_heads // cfg.num_kv_heads
        keys, values = keys.repeat_interleave(group, dim=0), values.repeat_interleave(group, dim=0)
        scores = torch.matmul(q, keys.transpose(1, 2)) * cfg.head_dim**-0.5 + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, values).transpose(0, 1).reshape(n, cfg.num_heads * cfg.head_dim)
        return k, v, w.o_proj(out)

    @staticmethod
    def _append(cache: KVCache, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if index < len(cache.keys):
            cache.keys[index] = torch.cat((cache.keys[index], k), dim=1)
            cache.values[index] = torch.cat((cache.values[index], v), dim=1)
        else:
            cache.keys.append(k)
            cache.values.append(v)

    # -- weights ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_diffusion_from_ar(self) -> None:
        """Copy every layer's AR attention weights into its `_diff` slots (the recipe's initialisation)."""
        for layer in self.layers:
            layer.attn_diff.load_state_dict(layer.attn.state_dict())

    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Load tensors named as in an HF Orthrus checkpoint; every parameter must be present."""
        own = self.state_dict()
        for own_name, hf_name in hf_names(self).items():
            if hf_name not in tensors:
                raise PyorthrusError(f"{source}: missing tensor {hf_name}")
            _copy_checked(own[own_name], tensors[hf_name], hf_name, source)


def _copy_checked(dest: torch.Tensor, value: torch.Tensor, name: str, source: str) -> None:
    if tuple(value.shape) != tuple(dest.shape):
        raise PyorthrusError(f"{source}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(dest.shape)}")
    with torch.no_grad():
        dest.copy_(value.to(dest.dtype))


def hf_names(model: OrthrusModel) -> dict[str, str]:
    """Our parameter name -> its name in an HF Orthrus checkpoint."""
    names = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if model.lm_head is not None:
        names["lm_head.weight"] = "lm_head.weight"
    for own_name, _ in model.named_parameters():
        if not own_name.startswith("layers."):
            continue
        _, index, rest = own_name.split(".", 2)
        prefix = f"model.layers.{index}."
        if rest.startswith("attn_diff."):
            proj, kind = rest[len("attn_diff."):].rsplit(".", 1)
            names[own_name] = f"{prefix}self_attn.{proj}_diff.{kind}"
        elif rest.startswith("attn."):
            names[own_name] = f"{prefix}self_attn.{rest[len('attn.'):]}"
        else:
            names[own_name] = prefix + rest
    return names


# ---------------------------------------------------------------------------------------------------------------
# Loading HF checkpoints


def read_hf_tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors checkpoint, loaded eagerly (reference use: small models)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for shard in checkpoint_shards(ckpt_dir):
        tensors.update(load_file(str(shard)))
    return tensors


def checkpoint_shards(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [ckpt_dir / name for name in dict.fromkeys(weight_map.values())]
    single = ckpt_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise PyorthrusError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")


def load_hf(path, base=None, dtype: torch.dtype = torch.float32) -> OrthrusModel:
    """Load an Orthrus HF checkpoint. A diff-only checkpoint (only `_diff` tensors, as the trainer writes) needs
    `base`: an HF base directory or a base GGUF file. A plain Qwen3/Llama checkpoint gets diff weights copied from AR."""
    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    tensors = read_hf_tensors(path)
    diff_only = all("_diff." in name for name in tensors)
    if diff_only:
        if base is None:
            raise PyorthrusError(f"{path}: diff-only checkpoint; pass the base model (HF directory or GGUF)")
        model = load_gguf(base) if str(base).endswith(".gguf") else load_hf(base, dtype=dtype)
        model = model.to(dtype)
        model.cfg = replace(model.cfg, block_size=hf_config.get("block_size", model.cfg.block_size),
                            mask_token_id=hf_config.get("mask_token_id", model.cfg.mask_token_id))
        _load_diff_tensors(model, tensors, str(path))
        return model
    cfg = config_from_hf(hf_config, str(path / "config.json"))
    model = OrthrusModel(cfg, dtype)
    if not any("_diff." in name for name in tensors):  # plain base: the recipe's initialisation
        tensors = {**tensors, **{_hf_diff_name(k): v for k, v in _hf_ar_attention(tensors).items()}}
    model.load_hf_state_dict(tensors, str(path))
    return model


def _hf_ar_attention(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts = tuple(f".self_attn.{p}." for p in ATTENTION_PROJECTIONS + QK_NORMS)
    return {k: v for k, v in tensors.items() if any(p in k for p in parts)}


def _hf_diff_name(name: str) -> str:
    head, kind = name.rsplit(".", 1)
    return f"{head}_diff.{kind}"


def _load_diff_tensors(model: OrthrusModel, tensors: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    for own_name, hf_name in hf_names(model).items():
        if "_diff." not in hf_name:
            continue
        if hf_name not in tensors:
            raise PyorthrusError(f"{source}: missing tensor {hf_name}")
        _copy_checked(own[own_name], tensors[hf_name], hf_name, source)


# ---------------------------------------------------------------------------------------------------------------
# Loading GGUF files


def gguf_tensor_f32(tensor) -> np.ndarray:
    """A GGUF tensor as a float32 array in numpy (row-major, HF) shape."""
    import gguf

    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.array(data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))


def config_from_gguf(reader, source: str) -> OrthrusConfig:
    arch = gguf_field(reader, "general.architecture")
    base = GGUF_ARCH_TO_BASE.get(arch)
    if base is None or base == QWEN35:
        raise PyorthrusError(f"{source}: unsupported architecture {arch!r}"
                             + (" (its reference is pyorthrus.reference_qwen35)" if base == QWEN35 else ""))
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise PyorthrusError(f"{source}: no token_embd.weight; not a model file")
    vocab, hidden = (int(d) for d in reversed(tensors["token_embd.weight"].shape))
    scaling = gguf_field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensors:
        raise PyorthrusError(f"{source}: RoPE scaling ({scaling}) is not supported by the reference")
    heads = gguf_field(reader, f"{arch}.attention.head_count")
    q_rows = int(tensors["blk.0.attn_q.weight"].shape[1])
    return OrthrusConfig(
        base=base,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=gguf_field(reader, f"{arch}.feed_forward_length"),
        num_layers=gguf_field(reader, f"{arch}.block_count"),
        num_heads=heads,
        num_kv_heads=gguf_field(reader, f"{arch}.attention.head_count_kv", heads),
        head_dim=gguf_field(reader, f"{arch}.attention.key_length", q_rows // heads),
        rms_norm_eps=gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=gguf_field(reader, f"{arch}.rope.freq_base", 10000.0),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_output.bias" in tensors,
        block_size=gguf_field(reader, KEY_BLOCK_SIZE.format(arch=arch), 32),
        mask_token_id=gguf_field(reader, KEY_MASK_TOKEN_ID),
    )


# GGUF per-layer tensor name -> our name inside a Layer ("{attn}" is attn or attn_diff).
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q": "{attn}.q_proj",
    "attn_k": "{attn}.k_proj",
    "attn_v": "{attn}.v_proj",
    "attn_output": "{attn}.o_proj",
    "attn_q_norm": "{attn}.q_norm",
    "attn_k_norm": "{attn}.k_norm",
}


def _own_name_for_gguf(name: str) -> str | None:
    if name == "token_embd.weight":
        return "embed_tokens.weight"
    if name == "output_norm.weight":
        return "norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk":
        return None
    _, index, tensor, kind = parts
    attn = "attn"
    if tensor.endswith("_diff"):
        tensor, attn = tensor[: -len("_diff")], "attn_diff"
    own = _GGUF_LAYER_NAMES.get(tensor)
    if own is None or (attn == "attn_diff" and "{attn}" not in own):
        return None
    return f"layers.{index}.{own.format(attn=attn)}.{kind}"


def _gguf_name(reader) -> str:
    return str(reader.data.filename)


def load_gguf(base_gguf, adapter_gguf=None, dtype: torch.dtype = torch.float32) -> OrthrusModel:
    """Load a base or merged GGUF (any quantization, dequantized) and optionally an Orthrus adapter GGUF; each is
    a path or an open gguf.GGUFReader. Llama Q/K rows are un-permuted back to the HF layout. Without diff tensors
    the diff slots copy the AR weights."""
    reader = open_reader(base_gguf)
    cfg = config_from_gguf(reader, _gguf_name(reader))
    sources = [(reader, _gguf_name(reader))]
    if adapter_gguf is not None:
        adapter = open_reader(adapter_gguf)
        mismatch = fit_error(adapter_fit(reader, adapter))
        if mismatch:
            raise PyorthrusError(mismatch)
        cfg = replace(cfg, block_size=gguf_field(adapter, KEY_ADAPTER_BLOCK_SIZE, cfg.block_size),
                      mask_token_id=gguf_field(adapter, KEY_MASK_TOKEN_ID, cfg.mask_token_id))
        sources.append((adapter, _gguf_name(adapter)))
    model = OrthrusModel(cfg, dtype)
    own = model.state_dict()
    loaded: set[str] = set()
    for src_reader, source in sources:
        for tensor in src_reader.tensors:
            own_name = _own_name_for_gguf(tensor.name)
            if own_name is None or own_name not in own:
                raise PyorthrusError(f"{source}: unexpected tensor {tensor.name}")
            value = gguf_tensor_f32(tensor)
            n_head = llama_qk_permute_heads(cfg, tensor.name)
            if n_head:
                value = unpermute_qk_rows(value, n_head)
            _copy_checked(own[own_name], torch.from_numpy(value), tensor.name, source)
            loaded.add(own_name)
    has_diff = any(".attn_diff." in name for name in loaded)
    if not has_diff:
        model.init_diffusion_from_ar()
        loaded |= {name for name in own if ".attn_diff." in name}
    missing = sorted(set(own) - loaded)
    if missing:
        raise PyorthrusError(f"{sources[-1][1]}: no tensor for {missing[0]} ({len(missing)} missing in all)")
    return model


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class ReferenceStats:
    """What the reference decoders did (pyorthrus.stats.GenerationStats is llama.cpp's side, with timings):
    `accepted` holds, per draft/verify cycle, how many drafted tokens the verify accepted (the bonus excluded)."""

    accepted: list[int] = field(default_factory=list)
    ar_passes: int = 0
    draft_passes: int = 0

    @property
    def tokens_per_cycle(self) -> float:
        return (sum(self.accepted) + len(self.accepted)) / max(1, len(self.accepted))


class _Output:
    """Collects generated tokens and says when to stop (EOS / stop ids / max tokens), possibly mid-block."""

    def __init__(self, max_new_tokens: int, stop_ids):
        self.tokens: list[int] = []
        self.max_new_tokens = max_new_tokens
        self.stop_ids = set(int(t) for t in stop_ids)
        self.done = max_new_tokens <= 0

    def emit(self, token: int) -> bool:
        """Add a token; return True once generation must stop."""
        if not self.done:
            self.tokens.append(int(token))
            self.done = len(self.tokens) >= self.max_new_tokens or int(token) in self.stop_ids
        return self.done


def _prefill(model: OrthrusModel, prompt_ids) -> tuple[KVCache, int]:
    """Cache the prompt except its last token, which becomes x_s."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise PyorthrusError("empty prompt")
    cache = model.new_cache()
    if len(prompt) > 1:
        model.forward_ar(prompt[:-1], cache)
    return cache, prompt[-1]


def _mask_id(model: OrthrusModel) -> int:
    if model.cfg.mask_token_id is None:
        raise PyorthrusError("the model has no mask_token_id; Orthrus decoding needs one")
    return model.cfg.mask_token_id


@torch.no_grad()
def greedy_generate(model: OrthrusModel, prompt_ids, max_new_tokens: int, block_size: int | None = None,
                    stop_ids=()) -> tuple[list[int], ReferenceStats]:
    """Greedy decoding: plain AR when `block_size` is None, else Orthrus draft/verify with blocks of `block_size`."""
    cache, x = _prefill(model, prompt_ids)
    out, stats = _Output(max_new_tokens, stop_ids), ReferenceStats()
    while not out.done:
        if block_size is None:
            x = int(model.forward_ar([x], cache)[-1].argmax())
            stats.ar_passes += 1
            out.emit(x)
            continue
        s = len(cache)
        block = [x] + [_mask_id(model)] * (block_size - 1)
        drafts = model.forward_draft(block, cache)[:-1].argmax(-1).tolist()
        verify = model.forward_ar([x] + drafts, cache).argmax(-1).tolist()
        stats.draft_passes += 1
        stats.ar_passes += 1
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == verify[accepted]:
            accepted += 1
        stats.accepted.append(accepted)
        cache.crop(s + accepted + 1)
        for token in drafts[:accepted] + [verify[accepted]]:
            if out.emit(token):
                break
        x = verify[accepted]
    return out.tokens, stats


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0) -> torch.Tensor:
    """Row-wise probabilities (float64) as llama.cpp's samplers leave them (pyorthrus.sampling, the one
    implementation): top-k, top-p and min-p on the raw logits, then softmax(logit / temperature); temperature <= 0
    puts all mass on the argmax (speculative sampling then reduces to greedy verify)."""
    rows = logits.detach().double().reshape(-1, logits.shape[-1]).cpu().numpy()
    probs = np.stack([sampling_distribution(row, temperature, top_k, top_p, min_p) for row in rows])
    return torch.from_numpy(probs).reshape(logits.shape)


@torch.no_grad()
def sample_generate(model: OrthrusModel, prompt_ids, max_new_tokens: int, block_size: int | None = None,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                    stop_ids=()) -> tuple[list[int], ReferenceStats]:
    """Sampling: plain AR when `block_size` is None, else Orthrus speculative rejection sampling (lossless: the
    output distribution is the AR one). Drafts are sampled from the diffusion rows q, verified against the AR rows p."""
    rng = torch.Generator().manual_seed(seed)

    def draw(probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs.float(), 1, generator=rng))

    cache, x = _prefill(model, prompt_ids)
    out, stats = _Output(max_new_tokens, stop_ids), ReferenceStats()
    while not out.done:
        if block_size is None:
            x = draw(sampling_probs(model.forward_ar([x], cache)[-1], temperature, top_k, top_p))
            stats.ar_passes += 1
            out.emit(x)
            continue
        s = len(cache)
        block = [x] + [_mask_id(model)] * (block_size - 1)
        q = sampling_probs(model.forward_draft(block, cache)[:-1], temperature, top_k, top_p)
        drafts = [draw(row) for row in q]
        p = sampling_probs(model.forward_ar([x] + drafts, cache), temperature, top_k, top_p)
        stats.draft_passes += 1
        stats.ar_passes += 1
        accepted, next_token = 0, None
        for i, d in enumerate(drafts):
            if float(torch.rand((), generator=rng, dtype=torch.float64)) < min(1.0, float(p[i, d] / q[i, d])):
                accepted += 1
                continue
            residual = (p[i] - q[i]).clamp_min(0.0)
            next_token = draw(residual / residual.sum())
            break
        if next_token is None:
            next_token = draw(p[accepted])
        stats.accepted.append(accepted)
        cache.crop(s + accepted + 1)
        for token in drafts[:accepted] + [next_token]:
            if out.emit(token):
                break
        x = next_token
    return out.tokens, stats
