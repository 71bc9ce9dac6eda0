"""`pyorthrus train` on an Orthrus-Qwen3.5 checkpoint (issue 37): the twins of its attention and Gated DeltaNet layers
learn the AR view's next-token distributions over draft blocks (forward KL, self-distillation), as for the other
bases, on the PyTorch reference of both views (pyorthrus.reference_qwen35), one document at a time, in train.loop's
loop (checkpoints, --resume, --max-minutes, --eval-data as for the other bases).

Per document: one no-grad AR pass keeps the cache (keys, conv windows, states) at each block start s and the AR
logits of every row; then the blocks [x_s, MASK...] run through the twins together, each from the cache at its s,
and row i of a block learns AR's row s+i (the token s+i+1). From an HF base the output is a full checkpoint in the
reference's format (the AR weights unchanged, the trained twins), which `pyorthrus convert OUT --merged-out F.gguf`
turns into a merged file; from a Qwen3.5 GGUF (any quantization, dequantized) it holds the twins alone, which
`pyorthrus convert OUT --adapter-out A.gguf` turns into an adapter file for that GGUF.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from torch.nn import functional as F

from .. import options
from ..errors import PyorthrusError
from ..files import atomic_write
from ..gguf_meta import gguf_field, open_reader
from ..qwen35_layout import hf_name, layer_past
from ..reference_qwen35 import (QWEN35_BASE_MODEL_TYPES, Qwen35Reference, base_text_config, hf_tensors,
                               load_checkpoint, load_gguf, orthrus_from_base)
from . import data as data_mod
from .config import TrainConfig
from .model import forward_kl, reach

GGUF_ARCHS = ("qwen35", "qwen35moe")  # a Qwen3.5 GGUF's general.architecture


def qwen35_model_type(base) -> str | None:
    """What kind of Qwen3.5 base this trainer takes `base` for: an HF directory's model_type ("orthrus_qwen3_5",
    the reference's checkpoint with its twins, or a plain Qwen3.5's, QWEN35_BASE_MODEL_TYPES) or a GGUF's
    architecture (GGUF_ARCHS); None for anything else."""
    base = Path(base)
    if base.suffix == ".gguf":
        arch = gguf_field(open_reader(base), "general.architecture") if base.is_file() else None
        return arch if arch in GGUF_ARCHS else None
    config = base / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return model_type if model_type in ("orthrus_qwen3_5", *QWEN35_BASE_MODEL_TYPES) else None


def default_mask_token(base, vocab_size: int, reader=None) -> int:
    """The mask of a plain Qwen3.5 base, picked as the reference picks Qwen3's: the first id past the tokenizer's
    tokens, an embedding row that no text produces. In a GGUF that is the first of the padding tokens llama.cpp's
    converter appends up to the embedding's rows (type UNUSED), so an HF base and its GGUF pick the same id.
    reader: the GGUF, already open."""
    if Path(base).suffix == ".gguf":
        import gguf

        types = list(gguf_field(reader or open_reader(base), "tokenizer.ggml.token_type", []) or [])
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


def initial_twins(init_from, model: Qwen35Reference) -> dict[str, torch.Tensor]:
    """--init-from's twins, checked against the model's: an adapter GGUF (brought back to transformers' layout) or a
    checkpoint directory (what this trainer writes: the twins alone, or a full checkpoint)."""
    from ..reference import read_hf_tensors

    path = Path(init_from)
    if path.suffix == ".gguf":
        tensors = hf_tensors(open_reader(path), model.hf)
    elif (path / "config.json").is_file():
        tensors = read_hf_tensors(path)
    else:
        raise PyorthrusError(f"{path}: --init-from takes an adapter GGUF or a checkpoint directory")
    twins = {name: t.float() for name, t in tensors.items() if "_diff" in name}
    want = {name: t.shape for name, t in model.w.items() if "_diff" in name}
    missing = sorted(set(want) - set(twins))
    if missing:
        raise PyorthrusError(f"{path}: no twin {missing[0]} ({len(missing)} of the base's {len(want)} missing)")
    for name, shape in want.items():
        if twins[name].shape != shape:
            raise PyorthrusError(f"{path}: {name} has shape {list(twins[name].shape)}, the base's {list(shape)}")
    return twins


def base_parameters(base, reader=None) -> tuple[int, int]:
    """(weights, of which twinned) of a Qwen3.5 base, read from its GGUF (`reader`, if already open) or safetensors
    headers without loading it: every tensor the reference keeps (the MTP head and a vision tower left out), and
    the attention and DeltaNet tensors a twin copies (counted once, whether or not the file holds twins)."""
    from ..convert.checkpoint import read_safetensors_header
    from ..reference import checkpoint_shards

    base = Path(base)
    if base.suffix == ".gguf":
        reader = reader or open_reader(base)
        layers = gguf_field(reader, f"{gguf_field(reader, 'general.architecture')}.block_count")
        if not isinstance(layers, int):  # a broken count: loading says so
            layers = len(reader.tensors)
        sizes = {t.name: int(t.n_elements) for t in reader.tensors if not layer_past(t.name, layers)}
        names = {name: hf_name(name) or "" for name in sizes}
    else:
        sizes = {}
        for shard in checkpoint_shards(base):
            header, _ = read_safetensors_header(shard)
            sizes.update({name: math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__"
                          and not name.startswith(("mtp.", "model.visual.", "visual."))})
        names = {name: name for name in sizes}
    twins = sum(sizes[name] for name, hf in names.items()
                if "_diff" not in name and (".self_attn." in hf or ".linear_attn." in hf))
    return sum(n for name, n in sizes.items() if "_diff" not in name), twins


def check_memory(cfg: TrainConfig, reader=None) -> None:
    """Refuse, before anything loads, a base whose float32 training would not fit: every weight in float32 in RAM
    (it loads there), and where it trains (RAM, or the card with --device cuda) each twin again with its gradient
    and two AdamW moments: 4 bytes a weight and 16 a twin. reader: the base GGUF, already open."""
    weights, twins = base_parameters(cfg.base, reader)
    need = {"memory": 4 * weights + 16 * twins}
    have = {"memory": options.available_memory()}
    if torch.device(cfg.device).type == "cuda":
        need = {"memory": 4 * (weights + twins), f"{cfg.device} memory": need["memory"]}
        have[f"{cfg.device} memory"] = torch.cuda.mem_get_info(torch.device(cfg.device))[0]
    for where, size in need.items():
        if have.get(where) is not None and size > have[where]:
            raise PyorthrusError(f"{cfg.base}: training its twins in float32 needs about {size / 2**30:.1f} GiB of "
                                 f"{where} ({weights / 1e9:.2f}B weights, {twins / 1e9:.2f}B of them twinned), "
                                 f"{have[where] / 2**30:.1f} GiB available")


class DocumentJob:
    """Training for Qwen3.5 bases (train.loop.run_job drives it): the twins of an Orthrus-Qwen3.5 checkpoint, a
    plain Qwen3.5 (twins start as copies of its AR weights, as the reference initialises them) or a qwen35 or
    qwen35moe GGUF, in float32. Each step draws --batch-size documents and a block offset for each (a pure
    function of the seed and the step, so a resumed run draws what an uninterrupted one would) and trains on one
    document at a time (document_loss). The weights go out in the reference's format (save_weights)."""

    precision = "fp32"

    def __init__(self, cfg: TrainConfig, state: dict | None, kind: str):
        """kind: qwen35_model_type(cfg.base)."""
        if cfg.precision == "bf16":
            raise PyorthrusError(f"{cfg.base}: a Qwen3.5 base trains in float32, without --precision bf16 (not "
                                 "built yet)")
        self.cfg = cfg
        reader = open_reader(cfg.base) if kind in GGUF_ARCHS else None  # parsed once (a vocabulary takes seconds)
        check_memory(cfg, reader)
        torch.manual_seed(cfg.seed)
        if reader is not None:
            model = load_gguf(cfg.base, reader=reader)  # its twins, if it is a merged file, else copies of the AR's
            mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else model.cfg.mask_token_id \
                if model.cfg.mask_token_id is not None else default_mask_token(cfg.base, model.cfg.vocab_size, reader)
        elif kind == "orthrus_qwen3_5":
            model = load_checkpoint(cfg.base)
            mask_id = model.cfg.mask_token_id if cfg.mask_token_id is None else cfg.mask_token_id
        else:
            vocab_size = base_text_config(cfg.base).get("vocab_size", 0)
            mask_id = default_mask_token(cfg.base, vocab_size) if cfg.mask_token_id is None else cfg.mask_token_id
            model = orthrus_from_base(cfg.base, cfg.block_size, mask_id)
        self.model, self.mask_id = model.to(cfg.device), mask_id
        self.docs = self._documents(cfg.data)
        self.eval_docs = self._documents(cfg.eval_data) if cfg.eval_data else None
        self.twins = {name: t.requires_grad_(True) for name, t in model.w.items() if "_diff" in name}
        self.init_info = state.get("init_info") if state is not None else None
        if cfg.init_from and state is None:
            self.load_diff(initial_twins(cfg.init_from, model))
            self.init_info = {"init_from": str(Path(cfg.init_from).resolve())}
        self.opt = torch.optim.AdamW(self.twins.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.data_tokens = sum(len(d.ids) for d in self.docs)
        self.tokens_per_step = self.data_tokens / len(self.docs) * cfg.batch_size
        self.config = {**model.hf, "block_size": cfg.block_size, "mask_token_id": int(mask_id), "dtype": "float32"}
        if Path(cfg.base).suffix == ".gguf":
            self.config["orthrus_base_model"] = str(Path(cfg.base).resolve())

    def _documents(self, paths) -> list:
        docs = data_mod.split_long(data_mod.read_documents(paths, self.cfg.base), self.cfg.seq_len)
        if not docs:
            raise PyorthrusError(f"{paths[0]}: no training documents")
        for d in docs:
            if max(d.ids) >= self.model.cfg.vocab_size:
                raise PyorthrusError(f"{paths[0]}: token id {max(d.ids)} is outside the base vocabulary")
        return docs

    def step(self, step: int, lr: float) -> tuple[float, float, int]:
        """One optimizer step: (loss, mean accepted drafts per block, tokens)."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        step_loss, step_accepted, tokens = 0.0, [], 0
        for i in torch.randint(0, len(self.docs), (cfg.batch_size,), generator=gen).tolist():
            doc = self.docs[i]
            offset = int(torch.randint(0, cfg.block_size, (1,), generator=gen))
            starts = data_mod.block_starts(doc, cfg.block_size, offset) or [doc.lo]
            loss, accepted = document_loss(self.model, doc.ids, starts, cfg.block_size, self.mask_id,
                                           cfg.row_weights)
            (loss / cfg.batch_size).backward()  # one document's graph at a time
            step_loss += loss.item() / cfg.batch_size
            step_accepted += accepted
            tokens += len(doc.ids)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.twins.values()), cfg.grad_clip)
        self.opt.step()
        return step_loss, sum(step_accepted) / len(step_accepted), tokens

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss (plain mean KL) and mean accepted drafts per block, blocks at offset 0."""
        losses, accepted = [], []
        for doc in self.eval_docs:
            starts = data_mod.block_starts(doc, self.cfg.block_size, 0) or [doc.lo]
            loss, acc = document_loss(self.model, doc.ids, starts, self.cfg.block_size, self.mask_id, "uniform")
            losses.append(float(loss))
            accepted += acc
        return {"eval_loss": sum(losses) / len(losses), "eval_accepted": sum(accepted) / len(accepted),
                "eval_blocks": len(accepted)}

    def epoch_of(self, step: int) -> float:
        return step * self.cfg.batch_size / len(self.docs)

    def save_weights(self, out: Path, config: dict) -> dict[str, torch.Tensor]:
        """A checkpoint in the reference's format, float32: `config` and the trained twins; from an HF base also its
        tokenizer files and every AR tensor as loaded (a full checkpoint), from a GGUF the twins alone (its weights
        stay there: config's orthrus_base_model). Returns the twins."""
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        base = Path(self.cfg.base)
        from_gguf = base.suffix == ".gguf"
        for item in [] if from_gguf else base.iterdir():
            if item.is_file() and item.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
                shutil.copyfile(item, out / item.name)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.model.w.items()
                   if name in self.twins or not from_gguf}
        atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
        return {name: tensors[name] for name in self.twins}

    def load_diff(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, t in self.twins.items():
                t.copy_(tensors[name].to(t.device))

    def close(self) -> None:
        pass
