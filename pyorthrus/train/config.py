"""The trainer's settings, declared once, and the learning-rate schedule they describe: TrainConfig's fields carry
their defaults and help, and `pyorthrus train` derives its flags from them (as llama-cpp-python's server derives its
argparse from its settings model). No torch here: `pyorthrus train --help` must not import it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields

ROW_WEIGHTS = ("acceptance", "uniform")
PRECISIONS = ("auto", "fp32", "bf16")


def _opt(default, help: str, **flag):
    """A field with its default and what `pyorthrus train` says of it (type=..., choices=..., nargs=...,
    metavar=..., short=..., no_default=True for help that states its default itself)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=dict(help=help, **flag))
    return field(default=default, metadata=dict(help=help, **flag))


@dataclass
class TrainConfig:
    base: str = field(metadata=dict(help="base model: a GGUF file (any quantization; dequantized to float) or an HF "
                                         "directory. Qwen3.5 bases (a qwen35 GGUF, an Orthrus-Qwen3.5 checkpoint of "
                                         "model_type orthrus_qwen3_5, or a plain Qwen3.5, whose twins start as "
                                         "copies of its AR weights) train on the CPU into a checkpoint in the "
                                         "reference's format: the twins alone from a GGUF",
                                    metavar="BASE"))
    data: list[str] = field(metadata=dict(help="training data: .jsonl ({\"ids\": [...]} or {\"text\": ...}, optional "
                                               "\"n_prompt\") or plain text files", nargs="+", metavar="FILE"))
    out: str = field(metadata=dict(help="output checkpoint directory", metavar="DIR"))
    block_size: int = _opt(16, "diffusion block size K", short="-K")
    seq_len: int = _opt(512, "tokens per packed sequence")
    batch_size: int = _opt(4, "packed sequences per step")
    lr: float = _opt(5e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = _opt(0.1, "the cosine schedule's floor, as a share of the peak")
    warmup_steps: int = _opt(20, "linear warm-up steps")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "gradient norm clip (0: off)")
    tokens: int = _opt(200_000, "token budget (real tokens of the AR stream); sets the step count")
    max_steps: int | None = _opt(None, "number of steps (overrides --tokens)", type=int)
    seed: int = _opt(0, "random seed")
    device: str = _opt("cpu", "cpu, cuda, cuda:N or mps")
    precision: str = _opt("auto", "auto: bf16 on CUDA/MPS and on CPUs with AMX/AVX512-BF16 (frozen weights stored in "
                                  "bf16, trained weights fp32 under autocast), else fp32", choices=PRECISIONS)
    save_every: int = _opt(50, "checkpoint every N steps")
    keep_every: int | None = _opt(None, "also keep the weights of every N-th step in OUT/stepNNNNNN (to measure a "
                                        "growth curve)", type=int, metavar="N")
    log_every: int = _opt(10, "log every N steps")
    eval_data: list[str] = _opt([], "held-out data for the periodic acceptance estimate", nargs="*", metavar="FILE")
    eval_every: int = _opt(100, "held-out acceptance every N steps")
    max_minutes: float | None = _opt(None, "stop (and checkpoint) after this much wall time; --resume continues",
                                     type=float)
    schedule_minutes: float | None = _opt(None, "a fixed time budget instead of a step count (e.g. a lent GPU): "
                                                "the learning-rate schedule runs over M minutes of training wall "
                                                "time, then training ends", type=float, metavar="M")
    mask_token_id: int | None = _opt(None, "mask token (default: the base's, else a reserved special token such as "
                                           "<empty_output>)", type=int, no_default=True)
    init_from: str | None = _opt(None, "start from these diff weights instead of the AR weights (new schedule): a "
                                       "diff-only checkpoint directory, or an adapter GGUF for a GGUF --base (e.g. "
                                       "the shipped one)", type=str, metavar="CKPT")
    row_weights: str = _opt("acceptance", "acceptance: weigh draft row i's KL by the chance that rows 0..i-1 were "
                                          "accepted, so far rows that rarely reach verification do not dominate "
                                          "(+0.16 tokens per cycle at K=16 on SmolLM2, MODEL_CARD.md); uniform: every "
                                          "row alike (the paper)", choices=ROW_WEIGHTS)
    threads: int | None = _opt(None, "torch CPU threads", type=int)
    progress: bool = field(default=True, metadata=dict(flag=False))  # set from --json, not a flag of its own


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--block-size for block_size, ...), with the field's default and help."""
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        if meta.pop("flag", True) is False:
            continue
        names = [f"--{f.name.replace('_', '-')}", *([meta.pop("short")] if "short" in meta else [])]
        help_text, no_default = meta.pop("help"), meta.pop("no_default", False)
        if f.default is MISSING and f.default_factory is MISSING:
            parser.add_argument(*names, required=True, help=help_text, **meta)
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        meta.setdefault("type", type(default) if default is not None and not isinstance(default, list) else None)
        if meta["type"] is None:
            del meta["type"]
        shown = "" if no_default or default is None or default == [] else f" (default {default:g})" \
            if isinstance(default, float) else f" (default {default})"
        parser.add_argument(*names, default=default, help=help_text + shown, **meta)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The TrainConfig the flags of add_config_flags gave, paths as strings."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.metadata.get("flag", True) is not False}
    values["data"] = [str(p) for p in values["data"]]
    values["eval_data"] = [str(p) for p in values["eval_data"]]
    values["base"], values["out"] = str(values["base"]), str(values["out"])
    return TrainConfig(**{**values, **overrides})


def lr_at(step: int, cfg: TrainConfig, total_steps: int, time_fraction: float | None = None) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio over the steps, or over the wall time when a
    --schedule-minutes budget gives `time_fraction` (elapsed / budget)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if time_fraction is not None:
        progress = min(1.0, time_fraction)
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
