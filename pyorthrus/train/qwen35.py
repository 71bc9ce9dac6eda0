"""`pyorthrus train` on an Orthrus-Qwen3.5 checkpoint (issue 37): the twins of its attention and Gated DeltaNet layers
learn the AR view's next-token distributions over draft blocks (forward KL, self-distillation), as for the other
bases, on the PyTorch reference of both views (pyorthrus.reference_qwen35), one document at a time.

Per document: one no-grad AR pass keeps the cache (keys, conv windows, states) at each block start s and the AR
logits of every row; then each block [x_s, MASK...] runs through the twins from the cache at s, and its row i learns
AR's row s+i (the token s+i+1). From an HF base the output is a full checkpoint in the reference's format (the AR
weights unchanged, the trained twins), which `pyorthrus convert OUT --merged-out F.gguf` turns into a merged file;
from a Qwen3.5 GGUF (any quantization, dequantized) it holds the twins alone, which `pyorthrus convert OUT
--adapter-out A.gguf` turns into an adapter file for that GGUF.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ..errors import PyorthrusError
from ..files import atomic_write
from ..gguf_meta import gguf_field, open_reader
from ..reference_qwen35 import (QWEN35_BASE_MODEL_TYPES, Qwen35Reference, base_text_config, load_checkpoint,
                               load_gguf, orthrus_from_base)
from . import data as data_mod
from .config import TrainConfig, lr_at
from .model import check_device, forward_kl, reach

UNSUPPORTED = {"resume": "--resume", "init_from": "--init-from", "eval_data": "--eval-data",
               "schedule_minutes": "--schedule-minutes", "keep_every": "--keep-every"}


GGUF_ARCHS = ("qwen35", "qwen35moe")  # a Qwen3.5 GGUF's general.architecture


def qwen35_model_type(base) -> str | None:
    """What kind of Qwen3.5 base this trainer takes `base` for: an HF directory's model_type ("orthrus_qwen3_5",
    the reference's checkpoint with its twins, or a plain Qwen3.5's, QWEN35_BASE_MODEL_TYPES) or a GGUF's
    architecture (GGUF_ARCHS; train_qwen35 refuses qwen35moe by name); None for anything else."""
    base = Path(base)
    if base.suffix == ".gguf":
        arch = gguf_field(open_reader(base), "general.architecture") if base.is_file() else None
        return arch if arch in GGUF_ARCHS else None
    config = base / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return model_type if model_type in ("orthrus_qwen3_5", *QWEN35_BASE_MODEL_TYPES) else None


def default_mask_token(base, vocab_size: int) -> int:
    """The mask of a plain Qwen3.5 base, picked as the reference picks Qwen3's: the first id past the tokenizer's
    tokens, an embedding row that no text produces. In a GGUF that is the first of the padding tokens llama.cpp's
    converter appends up to the embedding's rows (type UNUSED), so an HF base and its GGUF pick the same id."""
    if Path(base).suffix == ".gguf":
        import gguf

        types = list(gguf_field(open_reader(base), "tokenizer.ggml.token_type", []) or [])
        n = len(types)
        while n and types[n - 1] == gguf.TokenType.UNUSED:
            n -= 1
    else:
        n = len(data_mod.base_vocab(base))
    if not 0 < n < vocab_size:
        raise PyorthrusError(f"{base}: no embedding row past the tokenizer's {n} tokens (vocab_size {vocab_size}) to "
                             "serve as the mask: pass --mask-token-id")
    return n


def document_loss(model: Qwen35Reference, ids: list[int], starts: list[int], block_size: int, mask_id: int,
                  row_weights: str) -> tuple[torch.Tensor, list[int]]:
    """The mean forward KL of a document's blocks (starting at `starts`) and each block's greedy accepted drafts.
    One no-grad AR pass keeps the cache at each block start; then every block runs through the twins at once."""
    caches, logits, done = {}, [], 0
    with torch.no_grad():
        cache = model.new_cache()
        for s in sorted(set(starts)):
            if s > done:
                logits.append(model.forward_ar(ids[done:s], cache))
                done = s
            caches[s] = cache.copy()  # the seed of the block at s
        logits.append(model.forward_ar(ids[done:], cache))
    teacher_all = torch.cat(logits)
    students = model.forward_drafts([[ids[s]] + [mask_id] * (block_size - 1) for s in starts],
                                    [caches[s] for s in starts])
    losses, accepted = [], []
    for s, student in zip(starts, students):
        rows = min(block_size - 1, len(ids) - 1 - s)
        student, teacher = student[:rows], teacher_all[s:s + rows]
        weights = None
        if row_weights == "acceptance":
            with torch.no_grad():
                p_match = F.softmax(student, dim=-1).gather(-1, teacher.argmax(-1, keepdim=True)).T
                weights = reach(p_match)[0]
        losses.append(forward_kl(teacher, student, weights))
        accepted.append(int((teacher.argmax(-1) == student.argmax(-1)).long().cumprod(0).sum()))
    return torch.stack(losses).mean(), accepted


def train_qwen35(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train the twins of cfg.base, an Orthrus-Qwen3.5 checkpoint or a plain Qwen3.5 (whose twins start as copies
    of its AR weights, as the reference initialises them); write the trained checkpoint to cfg.out in the
    reference's format. Returns a summary."""
    unsupported = [flag for key, flag in UNSUPPORTED.items() if (resume if key == "resume" else getattr(cfg, key))]
    if cfg.precision == "bf16":
        unsupported.append("--precision bf16")
    if unsupported:
        raise PyorthrusError(f"{cfg.base}: a Qwen3.5 base trains in float32, without " + ", ".join(unsupported)
                             + " (not built yet)")
    check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kind = qwen35_model_type(cfg.base)
    if kind in GGUF_ARCHS:
        model = load_gguf(cfg.base)  # its twins, if it is a merged file, else copies of the AR weights
        mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else model.cfg.mask_token_id \
            if model.cfg.mask_token_id is not None else default_mask_token(cfg.base, model.cfg.vocab_size)
    elif kind == "orthrus_qwen3_5":
        model = load_checkpoint(cfg.base)
        mask_id = model.cfg.mask_token_id if cfg.mask_token_id is None else cfg.mask_token_id
    else:
        vocab_size = base_text_config(cfg.base).get("vocab_size", 0)
        mask_id = default_mask_token(cfg.base, vocab_size) if cfg.mask_token_id is None else cfg.mask_token_id
        model = orthrus_from_base(cfg.base, cfg.block_size, mask_id)
    model.to(cfg.device)
    docs = data_mod.split_long(data_mod.read_documents(cfg.data, cfg.base), cfg.seq_len)
    if not docs:
        raise PyorthrusError(f"{cfg.data[0]}: no training documents")
    for d in docs:
        if max(d.ids) >= model.cfg.vocab_size:
            raise PyorthrusError(f"{cfg.data[0]}: token id {max(d.ids)} is outside the base vocabulary")
    twins = [tensor.requires_grad_(True) for name, tensor in model.w.items() if "_diff" in name]
    opt = torch.optim.AdamW(twins, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tokens_per_step = sum(len(d.ids) for d in docs) / len(docs) * cfg.batch_size
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.tokens / tokens_per_step))
    gen = torch.Generator().manual_seed(cfg.seed)
    history, tokens, start = [], 0, time.monotonic()
    for step in range(total_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, total_steps)
        opt.zero_grad()
        step_loss, step_accepted = 0.0, []
        for i in torch.randint(0, len(docs), (cfg.batch_size,), generator=gen).tolist():
            doc = docs[i]
            offset = int(torch.randint(0, cfg.block_size, (1,), generator=gen))
            starts = data_mod.block_starts(doc, cfg.block_size, offset) or [doc.lo]
            loss, accepted = document_loss(model, doc.ids, starts, cfg.block_size, mask_id, cfg.row_weights)
            (loss / cfg.batch_size).backward()
            step_loss += loss.item() / cfg.batch_size
            step_accepted += accepted
            tokens += len(doc.ids)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(twins, cfg.grad_clip)
        opt.step()
        history.append({"step": step + 1, "loss": step_loss, "accepted": sum(step_accepted) / len(step_accepted)})
        if cfg.progress and (step + 1) % cfg.log_every == 0:
            print(f"step {step + 1}/{total_steps}: loss {step_loss:.4f}, accepted drafts/block "
                  f"{history[-1]['accepted']:.2f}", flush=True)
    save_checkpoint(Path(cfg.out), Path(cfg.base), model, cfg.block_size, mask_id)
    return {"stopped": "done", "steps": total_steps, "total_steps": total_steps, "tokens": tokens,
            "wall_s": time.monotonic() - start, "loss": history[-1]["loss"], "accepted": history[-1]["accepted"],
            "out": str(cfg.out), "history": history}


def save_checkpoint(out: Path, source: Path, model: Qwen35Reference, block_size: int, mask_id: int) -> None:
    """A checkpoint in the reference's format, float32: the source's config (with the trained block size and mask)
    and the trained twins; from an HF source also its tokenizer files and every AR tensor as loaded (a full
    checkpoint), from a GGUF the twins alone and the GGUF's path as orthrus_base_model (its weights stay there)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    from_gguf = source.suffix == ".gguf"
    for item in [] if from_gguf else source.iterdir():
        if item.is_file() and item.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            shutil.copyfile(item, out / item.name)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.w.items() if "_diff" in name or not from_gguf}
    atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    config = {**model.hf, "block_size": int(block_size), "mask_token_id": int(mask_id), "dtype": "float32"}
    if from_gguf:
        config["orthrus_base_model"] = str(source.resolve())
    atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
