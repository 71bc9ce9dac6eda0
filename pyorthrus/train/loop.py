"""The training loop: base loading, optimizer, progress, atomic checkpoints, resume.

Output directory (an upstream-format, diff-only Orthrus checkpoint plus the trainer's own state):
- `config.json`: the base config with `model_type: "orthrus"`, `architectures: ["OrthrusLM"]`, `base_model_type`,
  `block_size`, `mask_token_id`, and `orthrus_base_model` (the base path the checkpoint was trained on; the
  converter and `pyorthrus.reference.load_hf(dir, base=...)` take the base separately).
- `model.safetensors`: only `model.layers.{i}.self_attn.{q,k,v,o}_proj_diff.weight` (+ biases, + `{q,k}_norm_diff`
  for Qwen3), float32.
- `trainer_state.pt`: step, tokens, optimizer state, the diff weights and the history (what --resume reads).
- `train_log.jsonl`: one line per logged step (loss, running acceptance, tokens/s, held-out acceptance).
Every file is written to a temporary name and renamed into place, trainer_state.pt last.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import PyorthrusError
from ..files import atomic_write
from ..reference import OrthrusModel, load_gguf, load_hf, read_hf_tensors
from . import data as data_mod
from .config import PRECISIONS, ROW_WEIGHTS, TrainConfig, lr_at
from .model import check_device, diff_state_dict, load_diff_state_dict, trainable_parameters, training_step_loss

MASK_TOKEN_CANDIDATES = ("<empty_output>", "<|mask|>", "<mask>", "<|MASK|>", "[MASK]")


# ---------------------------------------------------------------------------------------------------------------


def load_base(base) -> OrthrusModel:
    base = Path(base)
    if not base.exists():
        raise PyorthrusError(f"{base}: base model does not exist")
    if base.suffix == ".gguf":
        model = load_gguf(base)
    elif base.is_dir():
        model = load_hf(base)
    else:
        raise PyorthrusError(f"{base}: base model must be a .gguf file or an HF checkpoint directory")
    model.float()
    model.init_diffusion_from_ar()  # the recipe's initialisation (a full Orthrus checkpoint's diff weights too)
    return model


def initial_diff_tensors(init_from, base) -> dict[str, torch.Tensor]:
    """The diff weights to start from: a diff-only checkpoint directory, or an adapter GGUF for a GGUF base (its
    weights dequantized, e.g. to continue training the shipped adapter)."""
    init_from = Path(init_from)
    if init_from.suffix != ".gguf":
        return read_hf_tensors(init_from)
    if Path(base).suffix != ".gguf":
        raise PyorthrusError(f"{init_from}: starting from an adapter GGUF needs a GGUF --base")
    return diff_state_dict(load_gguf(base, init_from))


def default_mask_token(base, model: OrthrusModel) -> int:
    """The base's own mask_token_id if it has one, else a reserved special token the chat text never produces."""
    if model.cfg.mask_token_id is not None:
        return int(model.cfg.mask_token_id)
    vocab = data_mod.base_vocab(base)
    for cand in MASK_TOKEN_CANDIDATES:
        if cand in vocab:
            return vocab.index(cand)
    raise PyorthrusError(f"{base}: no mask token found ({', '.join(MASK_TOKEN_CANDIDATES)}); pass --mask-token-id")


def checkpoint_config(model: OrthrusModel, base, block_size: int, mask_id: int) -> dict:
    cfg = model.cfg
    return {
        "model_type": "orthrus",
        "architectures": ["OrthrusLM"],
        "base_model_type": cfg.base,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "torch_dtype": "float32",
        "block_size": int(block_size),
        "mask_token_id": int(mask_id),
        "orthrus_base_model": str(Path(base).resolve()),
    }


def save_weights(out: Path, model: OrthrusModel, config: dict) -> dict[str, torch.Tensor]:
    """A diff-only checkpoint (what `pyorthrus convert` reads): model.safetensors + config.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = diff_state_dict(model)
    atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return tensors


def _cpu_has_fast_bf16() -> bool:
    """AMX / AVX512-BF16 CPUs (oneDNN): bf16 matmuls are several times faster than fp32 (measured 5.7x here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(device: str, precision: str) -> str:
    kind = torch.device(device).type
    if precision != "auto":
        return precision
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "mps":
        return "bf16"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


def _autocast(device: str, precision: str):
    kind = torch.device(device).type
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return None, "fp32"
    if precision != "bf16":
        raise PyorthrusError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return torch.autocast(device_type=kind, dtype=torch.bfloat16), "bf16"


@torch.no_grad()
def evaluate(model: OrthrusModel, docs, cfg: TrainConfig, mask_id: int, autocast=None) -> dict:
    """Held-out loss and mean accepted drafts per block (blocks at fixed offset 0). The loss is the plain mean KL
    over rows whatever --row-weights trains with: acceptance weights move as the model learns, so a weighted loss
    could rise while every row improves."""
    losses, accepted = [], []
    for batch in data_mod.eval_batches(docs, cfg.block_size, mask_id, cfg.seq_len):
        loss, acc = training_step_loss(model, batch.to(cfg.device), cfg.block_size, "uniform", _fresh(autocast))
        losses.append(float(loss))
        accepted.append(acc.float().cpu())
    acc = torch.cat(accepted)
    return {"eval_loss": sum(losses) / len(losses), "eval_accepted": float(acc.mean()), "eval_blocks": int(acc.numel())}


def _fresh(autocast):
    """torch.autocast objects are single-use context managers in some versions: make a new one each time."""
    if autocast is None:
        return None
    return torch.autocast(device_type=autocast.device, dtype=autocast.fast_dtype)


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, each with one line naming the flag."""
    check_device(cfg.device)
    if cfg.block_size < 2:
        raise PyorthrusError(f"block size {cfg.block_size} must be at least 2")
    if not (0.0 <= cfg.min_lr_ratio <= 1.0 and cfg.weight_decay >= 0.0 and cfg.grad_clip >= 0.0 and cfg.lr >= 0.0):
        raise PyorthrusError(f"--lr {cfg.lr}, --min-lr-ratio {cfg.min_lr_ratio}, --weight-decay {cfg.weight_decay}, "
                             f"--grad-clip {cfg.grad_clip}: need lr >= 0, 0 <= min-lr-ratio <= 1, weight decay >= 0 "
                             "and grad clip >= 0")
    if cfg.row_weights not in ROW_WEIGHTS:
        raise PyorthrusError(f"unknown row weights {cfg.row_weights!r} ({', '.join(ROW_WEIGHTS)})")
    if cfg.seq_len < cfg.block_size:
        raise PyorthrusError(f"seq_len {cfg.seq_len} must be at least the block size {cfg.block_size}")


def saved_state(cfg: TrainConfig, resume: bool) -> dict | None:
    """The trainer state a resumed run continues from (checked against cfg), None for a new run (which must not
    overwrite one)."""
    out = Path(cfg.out)
    state_path = out / "trainer_state.pt"
    state = None
    if resume:
        if not state_path.is_file():
            raise PyorthrusError(f"{state_path}: nothing to resume (no trainer state)")
        state = torch.load(str(state_path), map_location="cpu", weights_only=False)
        saved = state["config"]
        for key in ("block_size", "seq_len", "batch_size", "seed", "data"):
            if saved[key] != asdict(cfg)[key]:
                raise PyorthrusError(f"{state_path}: trained with {key}={saved[key]!r}, now {asdict(cfg)[key]!r}")
    elif state_path.exists():
        raise PyorthrusError(f"{out}: already holds a training run (use --resume, or another --out)")
    return state


def initial_model(cfg: TrainConfig, state: dict | None) -> tuple[OrthrusModel, int, dict | None]:
    """The base with its diff weights to start from (the AR weights, or --init-from's for a new run), its mask
    token, and where the diff weights came from."""
    torch.manual_seed(cfg.seed)
    model = load_base(cfg.base)
    mask_id = cfg.mask_token_id if cfg.mask_token_id is not None else default_mask_token(cfg.base, model)
    if not 0 <= mask_id < model.cfg.vocab_size:
        raise PyorthrusError(f"mask token id {mask_id} is outside the vocabulary ({model.cfg.vocab_size})")
    init_info = state.get("init_info") if state is not None else None
    if cfg.init_from and state is None:
        try:
            load_diff_state_dict(model, initial_diff_tensors(cfg.init_from, cfg.base))
        except KeyError as exc:
            raise PyorthrusError(f"{cfg.init_from}: missing diff tensor {exc.args[0]}") from None
        init_path = Path(cfg.init_from)
        init_config = init_path / "config.json"
        init_config = json.loads(init_config.read_text()) if init_config.is_file() else {}
        init_info = {"init_from": str(init_path.resolve()), **init_config.get("orthrus_training", {})}
    return model, mask_id, init_info


def optimizer_and_precision(model: OrthrusModel, cfg: TrainConfig):
    """AdamW over the diff weights, and the autocast context and precision the run trains in (bf16: the frozen
    matrices are stored in bf16 once; the trained diff weights stay fp32 master copies that autocast casts per use,
    the optimizer state stays fp32)."""
    opt = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    autocast, precision = _autocast(cfg.device, cfg.precision)
    if precision == "bf16":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad and p.dim() >= 2:
                    p.data = p.data.to(torch.bfloat16)
    return opt, autocast, precision


def optimizer_step(model: OrthrusModel, opt, batch, lr: float, cfg: TrainConfig, autocast) -> tuple[float, float]:
    """One step at learning rate lr: (loss, mean accepted drafts per block) of the batch."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss, acc = training_step_loss(model, batch, cfg.block_size, cfg.row_weights, _fresh(autocast))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:  # over the optimizer's own parameters: the trained diff weights
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], cfg.grad_clip)
    opt.step()
    return loss.item(), acc.float().mean().item()


class PackedJob:
    """Training for Qwen3 / Qwen2 / Llama bases: packed sequences of several documents, one training forward per
    batch (model.py). A job gives run_job step(step, lr), evaluate(), epoch_of(step), save_weights(out, config),
    load_diff(tensors) and close(), and its opt, config, mask_id, precision, init_info, eval_docs, tokens_per_step
    and data_tokens."""

    def __init__(self, cfg: TrainConfig, state: dict | None):
        self.cfg = cfg
        self.model, self.mask_id, self.init_info = initial_model(cfg, state)
        self.model.to(cfg.device)
        docs = data_mod.read_documents(cfg.data, cfg.base)
        for d in docs:
            if max(d.ids) >= self.model.cfg.vocab_size:
                raise PyorthrusError(f"{cfg.data[0]}: token id {max(d.ids)} is outside the base vocabulary")
        sequences = data_mod.pack_sequences(docs, cfg.seq_len, cfg.seed)
        self.batches = data_mod.Batches(sequences, cfg.batch_size, cfg.block_size, self.mask_id, cfg.seq_len,
                                        cfg.seed)
        self.eval_docs = data_mod.read_documents(cfg.eval_data, cfg.base) if cfg.eval_data else None
        self.tokens_per_step = self.batches.tokens_per_epoch / len(sequences) * cfg.batch_size
        self.data_tokens = self.batches.tokens_per_epoch
        self.opt, self.autocast, self.precision = optimizer_and_precision(self.model, cfg)
        self.config = checkpoint_config(self.model, cfg.base, cfg.block_size, self.mask_id)
        # On an accelerator the next step's batch is packed on the CPU while this one runs (batches are a pure
        # function of the step, so the order of work does not change them).
        self.prefetch = ThreadPoolExecutor(1) if torch.device(cfg.device).type != "cpu" else None
        self.pending = None  # (step, future)

    def _batch(self, step: int):
        if self.prefetch is None:
            return self.batches.batch(step)
        if self.pending is None or self.pending[0] != step:
            self.pending = (step, self.prefetch.submit(self.batches.batch, step))
        batch = self.pending[1].result()
        self.pending = (step + 1, self.prefetch.submit(self.batches.batch, step + 1))
        return batch

    def step(self, step: int, lr: float) -> tuple[float, float, int]:
        """One optimizer step: (loss, mean accepted drafts per block, real tokens)."""
        batch = self._batch(step).to(self.cfg.device)
        loss, accepted = optimizer_step(self.model, self.opt, batch, lr, self.cfg, self.autocast)
        return loss, accepted, batch.n_tokens

    def evaluate(self) -> dict:
        return evaluate(self.model, self.eval_docs, self.cfg, self.mask_id, self.autocast)

    def epoch_of(self, step: int) -> float:
        return self.batches.epoch_of(step)

    def save_weights(self, out: Path, config: dict) -> dict[str, torch.Tensor]:
        return save_weights(out, self.model, config)

    def load_diff(self, tensors: dict[str, torch.Tensor]) -> None:
        load_diff_state_dict(self.model, tensors)

    def close(self) -> None:
        if self.prefetch:
            self.prefetch.shutdown(cancel_futures=True)


def train(cfg: TrainConfig, resume: bool = False, on_log=None) -> dict:
    """Train; returns a summary. With `resume`, continue from `cfg.out/trainer_state.pt`."""
    from .qwen35 import DocumentJob, qwen35_model_type

    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = saved_state(cfg, resume)
    kind = qwen35_model_type(cfg.base)
    job = DocumentJob(cfg, state, kind) if kind else PackedJob(cfg, state)
    try:
        return run_job(job, cfg, state, on_log)
    finally:
        job.close()


def run_job(job, cfg: TrainConfig, state: dict | None, on_log=None) -> dict:
    """The training loop around a job (PackedJob, qwen35.DocumentJob): the learning-rate schedule, logging and the
    progress bar, held-out evaluation, checkpoints (every --save-every steps, at the end, on --max-minutes, SIGTERM
    or Ctrl-C) and resuming from one."""
    out = Path(cfg.out)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.tokens / job.tokens_per_step))
    schedule_s = cfg.schedule_minutes * 60 if cfg.schedule_minutes else None
    if schedule_s is not None:
        total_steps = cfg.max_steps or 10**9  # the wall-time budget ends the run

    step, tokens, history, wall = 0, 0, [], 0.0
    ema_loss = ema_acc = None
    if state is not None:
        job.load_diff(state["diff"])
        job.opt.load_state_dict(state["optimizer"])
        step, tokens, history, wall = state["step"], state["tokens"], state["history"], state["wall_s"]
        ema_loss, ema_acc = state["ema_loss"], state["ema_acc"]
        total_steps = state["total_steps"]
        if state.get("data_tokens") not in (None, job.data_tokens):
            import sys

            print(f"warning: the training data changed since the saved step ({state['data_tokens']} -> "
                  f"{job.data_tokens} tokens); batches after the resume differ from an uninterrupted run",
                  file=sys.stderr)
    hf_config = job.config
    hf_config["orthrus_training"] = {"data": [str(p) for p in cfg.data], "seq_len": cfg.seq_len,
                                     "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                                     "precision": job.precision, "row_weights": cfg.row_weights}
    if job.init_info:
        hf_config["orthrus_training"]["init"] = job.init_info

    def snapshot():
        hf_config["orthrus_training"].update(steps=step, tokens=tokens)
        tensors = job.save_weights(out, hf_config)
        full = {"step": step, "tokens": tokens, "total_steps": total_steps, "optimizer": job.opt.state_dict(),
                "history": history, "wall_s": wall, "ema_loss": ema_loss, "ema_acc": ema_acc,
                "config": asdict(cfg), "mask_token_id": job.mask_id, "init_info": job.init_info,
                "data_tokens": job.data_tokens, "diff": tensors}
        atomic_write(out / "trainer_state.pt", lambda p: torch.save(full, str(p)))

    stop = {"flag": False}
    old_handler = None
    with contextlib.suppress(ValueError):  # signal only works in the main thread
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

    log_path = out / "train_log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=None if schedule_s else total_steps, initial=step, unit="step", dynamic_ncols=True)
    t_start = time.time()
    wall_at_start, tokens_at_start = wall, tokens
    window_tokens, window_t = 0, time.time()
    summary_reason = "done"
    try:
        if job.eval_docs and step == 0:
            history.append({"step": 0, "tokens": 0, **job.evaluate()})
            _append_log(log_path, history[-1])
        while step < total_steps:
            if stop["flag"]:
                summary_reason = "interrupted"
                break
            if cfg.max_minutes is not None and (time.time() - t_start) / 60 >= cfg.max_minutes:
                summary_reason = "time limit"
                break
            if schedule_s is not None and wall >= schedule_s:
                if job.eval_docs and step % cfg.eval_every:  # the curve's last point: where the run ended
                    history.append({"step": step, "tokens": tokens, **job.evaluate()})
                    _append_log(log_path, history[-1])
                break
            time_fraction = None if schedule_s is None else wall / schedule_s
            loss_v, acc_v, n_tokens = job.step(step, lr_at(step, cfg, total_steps, time_fraction))
            step += 1
            tokens += n_tokens
            window_tokens += n_tokens
            ema_loss = loss_v if ema_loss is None else 0.9 * ema_loss + 0.1 * loss_v
            ema_acc = acc_v if ema_acc is None else 0.9 * ema_acc + 0.1 * acc_v
            wall = wall_at_start + time.time() - t_start
            if step % cfg.log_every == 0 or step == total_steps:
                now = time.time()
                tok_s = window_tokens / max(1e-9, now - window_t)
                window_tokens, window_t = 0, now
                rec = {"step": step, "tokens": tokens, "loss": loss_v, "ema_loss": ema_loss, "accepted": acc_v,
                       "ema_accepted": ema_acc, "lr": job.opt.param_groups[0]["lr"], "tok_s": tok_s,
                       "wall_s": wall, "epoch": job.epoch_of(step)}
                if job.eval_docs and (step % cfg.eval_every == 0 or step == total_steps):
                    rec.update(job.evaluate())
                history.append(rec)
                _append_log(log_path, rec)
                if on_log:
                    on_log(rec)
            if bar is not None:
                bar.update(1)
                # the bar shows this run's average, so it has a rate from the first step on
                run_tok_s = (tokens - tokens_at_start) / max(1e-9, wall - wall_at_start)
                bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.2f}", tok_s=f"{run_tok_s:.0f}")
            if step % cfg.save_every == 0 and step < total_steps:
                snapshot()
            if cfg.keep_every and step % cfg.keep_every == 0:
                hf_config["orthrus_training"].update(steps=step, tokens=tokens)
                job.save_weights(out / f"step{step:06d}", hf_config)
        snapshot()
    except KeyboardInterrupt:
        summary_reason = "interrupted"
        snapshot()
    finally:
        if bar is not None:
            bar.close()
        if old_handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old_handler)
    if schedule_s is not None and not cfg.max_steps:
        total_steps = step
    return {"out": str(out), "steps": step, "total_steps": total_steps, "tokens": tokens, "wall_s": wall,
            "loss": ema_loss, "accepted": ema_acc, "mask_token_id": job.mask_id, "precision": job.precision,
            "stopped": summary_reason, "history": history}


def _append_log(path: Path, rec: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
