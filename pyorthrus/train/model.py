"""The training forward: one no-grad AR pass over packed sequences, then ONE diffusion pass over all their blocks.

Layout of a packed batch (B sequences of up to T tokens, several documents per sequence, attention never crosses a
document and RoPE positions restart at each document):

- AR stream: the real tokens. Causal, document-isolated. Every layer's AR K/V (after norm and RoPE) is kept; the
  final logits at the rows a block predicts are the teacher.
- Diffusion stream: for every block starting at `s` (inside one document) the input `[x_s, MASK x (K-1)]` at the
  document positions `pos(s) ... pos(s)+K-1`. Per layer its queries attend to the concatenation [AR K/V ; diffusion
  K/V] with a boolean mask: AR keys of the same document at stream index < s, and the block's own K positions
  (bidirectionally). This is exactly the reference's `forward_draft` of that block with the document prefix cached.
- Row i of a block (i = 0 .. K-2) predicts position s+i+1; its teacher is the AR logits row s+i. Rows past the end
  of the document are not trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import PyorthrusError
from ..reference import OrthrusModel


def check_device(device: str) -> None:
    """Refuse a --device this machine's torch cannot use, in one line."""
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise PyorthrusError("--device cuda: no CUDA device is available to this torch build")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PyorthrusError("--device mps: Apple MPS is not available")
    if kind not in ("cpu", "cuda", "mps"):
        raise PyorthrusError(f"--device {device}: expected cpu, cuda or mps")


def trainable_parameters(model: OrthrusModel) -> list[nn.Parameter]:
    """Freeze the base; only every layer's `_diff` attention weights (projections, biases, q/k norms) train."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in model.layers:
        for p in layer.attn_diff.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def diff_state_dict(model: OrthrusModel) -> dict[str, torch.Tensor]:
    """The `_diff` weights under their upstream HF names (`model.layers.{i}.self_attn.q_proj_diff.weight`, ...)."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name, p in layer.attn_diff.named_parameters():
            module, kind = name.rsplit(".", 1)
            out[f"model.layers.{i}.self_attn.{module}_diff.{kind}"] = p.detach().float().cpu().contiguous()
    return out


def load_diff_state_dict(model: OrthrusModel, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for name, p in layer.attn_diff.named_parameters():
                module, kind = name.rsplit(".", 1)
                p.copy_(tensors[f"model.layers.{i}.self_attn.{module}_diff.{kind}"].to(p.dtype))


@dataclass
class PackedBatch:
    ids: torch.Tensor           # [B, T] long (padding: any id)
    pos: torch.Tensor           # [B, T] position within its document
    ar_mask: torch.Tensor       # [B, T, T] bool, True = may attend
    diff_ids: torch.Tensor      # [B, D] long
    diff_pos: torch.Tensor      # [B, D]
    diff_mask: torch.Tensor     # [B, D, T + D] bool
    teacher_rows: tuple[torch.Tensor, torch.Tensor]  # (batch index, AR stream index), [N] each
    student_rows: tuple[torch.Tensor, torch.Tensor]  # (batch index, diffusion stream index), [N] each
    row_block: torch.Tensor     # [N] global block number of each trained row
    row_index: torch.Tensor     # [N] i within its block (0 .. K-2)
    n_blocks: int
    n_tokens: int               # real tokens in the AR stream

    def to(self, device) -> "PackedBatch":
        mv = lambda t: t.to(device)  # noqa: E731
        return PackedBatch(mv(self.ids), mv(self.pos), mv(self.ar_mask), mv(self.diff_ids), mv(self.diff_pos),
                           mv(self.diff_mask), tuple(map(mv, self.teacher_rows)), tuple(map(mv, self.student_rows)),
                           mv(self.row_block), mv(self.row_index), self.n_blocks, self.n_tokens)


def pack_batch(sequences: list[list[tuple[list[int], list[int]]]], block_size: int, mask_id: int,
               seq_len: int | None = None) -> PackedBatch:
    """Build a PackedBatch. `sequences[b]` is a list of documents `(token_ids, block_starts)`: the documents are laid
    out one after the other; each block start `s` (index within its document, 0 <= s <= len-2) gets a diffusion
    block."""
    K = block_size
    B = len(sequences)
    T = seq_len or max(sum(len(d) for d, _ in seq) for seq in sequences)
    D = max(1, max(K * sum(len(starts) for _, starts in seq) for seq in sequences))
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    doc = torch.full((B, T), -1, dtype=torch.long)
    diff_ids = torch.full((B, D), mask_id, dtype=torch.long)
    diff_pos = torch.zeros(B, D, dtype=torch.long)
    diff_mask = torch.zeros(B, D, T + D, dtype=torch.bool)
    tb, tr, sb, sr, rblock, rindex = [], [], [], [], [], []
    n_blocks, n_tokens = 0, 0
    for b, seq in enumerate(sequences):
        offset, d = 0, 0
        for doc_no, (tokens, starts) in enumerate(seq):
            n = len(tokens)
            if offset + n > T:
                raise ValueError(f"sequence {b} holds {offset + n} tokens, more than seq_len {T}")
            ids[b, offset:offset + n] = torch.as_tensor(tokens, dtype=torch.long)
            pos[b, offset:offset + n] = torch.arange(n)
            doc[b, offset:offset + n] = doc_no
            n_tokens += n
            for s in starts:
                if not 0 <= s <= n - 2:
                    raise ValueError(f"block start {s} outside a document of {n} tokens")
                diff_ids[b, d] = tokens[s]
                diff_pos[b, d:d + K] = torch.arange(s, s + K)
                diff_mask[b, d:d + K, offset:offset + s] = True          # AR K/V of the document before s
                diff_mask[b, d:d + K, T + d:T + d + K] = True            # the block itself, bidirectionally
                valid = min(K - 1, n - 1 - s)                            # rows predicting inside the document
                tb += [b] * valid
                tr += list(range(offset + s, offset + s + valid))
                sb += [b] * valid
                sr += list(range(d, d + valid))
                rblock += [n_blocks] * valid
                rindex += list(range(valid))
                n_blocks += 1
                d += K
            offset += n
        # Unused diffusion rows (padding) see themselves only, so softmax stays finite.
        for j in range(d, D):
            diff_mask[b, j, T + j] = True
    same_doc = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ar_mask = same_doc & causal
    ar_mask |= torch.eye(T, dtype=torch.bool)  # padding rows attend to themselves
    as_long = lambda x: torch.as_tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(ids, pos, ar_mask, diff_ids, diff_pos, diff_mask, (as_long(tb), as_long(tr)),
                       (as_long(sb), as_long(sr)), as_long(rblock), as_long(rindex), n_blocks, n_tokens)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(model: OrthrusModel, pos: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos and sin [B, 1, L, head_dim] of positions pos [B, L] (also bench/gpu_gen.py's sampler)."""
    freqs = pos[..., None].float() * model.inv_freq.to(pos.device)[None, None, :]   # [B, L, hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]                              # [B, 1, L, hd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def qkv(model: OrthrusModel, w, h: torch.Tensor, cos, sin):
    """Q, K, V [B, heads, L, head_dim] of hidden states h through attention weights w (AR or diff), normed (Qwen3)
    and rotated."""
    cfg = model.cfg
    B, L, _ = h.shape
    q = w.q_proj(h).view(B, L, cfg.num_heads, cfg.head_dim)
    k = w.k_proj(h).view(B, L, cfg.num_kv_heads, cfg.head_dim)
    v = w.v_proj(h).view(B, L, cfg.num_kv_heads, cfg.head_dim)
    if w.q_norm is not None:
        q, k = w.q_norm(q), w.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # [B, heads, L, hd]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q, k, v


def attend(model: OrthrusModel, w, q, k, v, mask) -> torch.Tensor:
    """Attention of q over k, v (KV heads repeated for grouped queries) under mask [B, Lq, Lk], through w's output
    projection."""
    cfg = model.cfg
    group = cfg.num_heads // cfg.num_kv_heads
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None])
    B, _, L, _ = out.shape
    return w.o_proj(out.transpose(1, 2).reshape(B, L, cfg.num_heads * cfg.head_dim))


def head(model: OrthrusModel, x: torch.Tensor) -> torch.Tensor:
    """Logits of hidden states x: the final norm and the output matrix (the embeddings when tied)."""
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    return F.linear(model.norm(x), weight)


@torch.no_grad()
def ar_pass(model: OrthrusModel, batch: PackedBatch):
    """No-grad causal pass: per-layer AR (K, V) [B, kv_heads, T, hd] and the teacher logits [N, vocab]."""
    dtype = model.embed_tokens.weight.dtype
    cos, sin = rope_tables(model, batch.pos, dtype)
    x = model.embed_tokens(batch.ids)
    kv = []
    for layer in model.layers:
        q, k, v = qkv(model, layer.attn, layer.input_layernorm(x), cos, sin)
        kv.append((k, v))
        x = x + attend(model, layer.attn, q, k, v, batch.ar_mask)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    b, t = batch.teacher_rows
    return kv, head(model, x[b, t])


def diffusion_pass(model: OrthrusModel, batch: PackedBatch, ar_kv) -> torch.Tensor:
    """All blocks of the batch in one pass with the `_diff` weights; returns the student logits [N, vocab]."""
    dtype = model.embed_tokens.weight.dtype
    cos, sin = rope_tables(model, batch.diff_pos, dtype)
    y = model.embed_tokens(batch.diff_ids)
    for layer, (ka, va) in zip(model.layers, ar_kv):
        q, k, v = qkv(model, layer.attn_diff, layer.input_layernorm(y), cos, sin)
        keys = torch.cat((ka.to(k.dtype), k), dim=2)
        values = torch.cat((va.to(v.dtype), v), dim=2)
        y = y + attend(model, layer.attn_diff, q, keys, values, batch.diff_mask)
        y = y + layer.mlp(layer.post_attention_layernorm(y))
    b, r = batch.student_rows
    return head(model, y[b, r])


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
               row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_AR || q_diffusion) per row, computed in float32; the mean over rows, or their weighted mean."""
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    logq = F.log_softmax(student_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    if row_weights is None:
        return kl.mean()
    return (row_weights * kl).sum() / row_weights.sum().clamp_min(1e-6)


def _block_grid(batch: PackedBatch, values: torch.Tensor, block_size: int, fill: float) -> torch.Tensor:
    """Per-row values laid out as [n_blocks, K-1] by (block, index in block); rows not trained hold `fill`."""
    grid = torch.full((batch.n_blocks, block_size - 1), fill, dtype=values.dtype, device=values.device)
    grid[batch.row_block, batch.row_index] = values
    return grid


@torch.no_grad()
def acceptance_weights(batch: PackedBatch, teacher_logits, student_logits, block_size: int) -> torch.Tensor:
    """Row i of a block counts only if the drafts before it were accepted, so weigh its loss by the student's
    probability of having matched the AR argmax at rows 0..i-1 (1 for row 0). Without this the far rows of a long
    block, which almost never reach verification, dominate the loss. [N]"""
    target = teacher_logits.argmax(-1, keepdim=True)
    p_match = F.softmax(student_logits.float(), dim=-1).gather(-1, target).squeeze(-1)
    return reach(_block_grid(batch, p_match, block_size, 1.0))[batch.row_block, batch.row_index]


def reach(p_match: torch.Tensor) -> torch.Tensor:
    """[blocks, rows]: the chance that every earlier row of its block matched (1 for row 0), from the per-row match
    probabilities p_match [blocks, rows]."""
    return torch.cumprod(torch.cat((torch.ones_like(p_match[:, :1]), p_match[:, :-1]), dim=1), dim=1)


@torch.no_grad()
def accepted_per_block(batch: PackedBatch, teacher_logits, student_logits, block_size: int) -> torch.Tensor:
    """Greedy acceptance per block: the leading run of rows with argmax(diffusion) == argmax(AR). [n_blocks]"""
    match = (teacher_logits.argmax(-1) == student_logits.argmax(-1)).long()
    return _block_grid(batch, match, block_size, 0).cumprod(dim=1).sum(dim=1)



def training_step_loss(model: OrthrusModel, batch: PackedBatch, block_size: int, row_weights: str, autocast=None):
    """(loss, accepted-per-block) of one packed batch. `row_weights`: "uniform" (every row alike, the paper's
    forward KL) or "acceptance" (see `acceptance_weights`)."""
    import contextlib

    ctx = autocast if autocast is not None else contextlib.nullcontext()
    with ctx:
        ar_kv, teacher = ar_pass(model, batch)
        student = diffusion_pass(model, batch, ar_kv)
    weights = acceptance_weights(batch, teacher, student, block_size) if row_weights == "acceptance" else None
    loss = forward_kl(teacher, student, weights)
    return loss, accepted_per_block(batch, teacher, student, block_size)
