"""`pyorthrus check --reference`: llama.cpp's AR decoding vs the FP32 PyTorch reference (pyorthrus.reference).

Per prompt: the next-token logits after the prompt (max |difference|, top-1 agreement, KL(reference || llama.cpp))
and the greedy trajectories (matched prefix; at the first divergence, the reference's logit margin between its
token and llama.cpp's). Against the dequantized GGUF the differences are llama.cpp's arithmetic alone (quantized
activations in the dot products, fused kernels); against the original HF checkpoint they also include the weight
quantization: how far the GGUF moves the model.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import PyorthrusError


@dataclass
class ReferenceRow:
    prompt: str
    kind: str
    max_abs_logit_diff: float
    top1_agree: bool
    kl_reference_llama: float
    identical: bool
    n_reference: int
    n_llama: int
    matched_prefix: int
    divergence: dict | None  # position, both tokens, the reference's logit margin between them


def validate(hf_dir: str | None) -> None:
    """Fail before any decoding: torch missing, or HF_DIR not a checkpoint."""
    if importlib.util.find_spec("torch") is None:
        raise PyorthrusError("--reference needs PyTorch: pip install 'pyorthrus[convert]' (or just torch)")
    if hf_dir and not (Path(hf_dir) / "config.json").is_file():
        raise PyorthrusError(f"{hf_dir}: not an HF checkpoint directory (no config.json)")


def load(model_path: Path, adapter_path: Path | None, hf_dir: str | None):
    """The reference model: the HF checkpoint in `hf_dir`, else the base GGUF dequantized to FP32 (a `qwen35`
    or `qwen35moe` one through the Qwen3.5 reference)."""
    from .. import reference, reference_qwen35
    from ..gguf_meta import gguf_field, open_reader

    reader = open_reader(model_path)  # parsed once (a vocabulary takes seconds)
    if gguf_field(reader, "general.architecture") in ("qwen35", "qwen35moe"):
        if hf_dir:
            return reference_qwen35.load_checkpoint(hf_dir)
        return reference_qwen35.load_gguf(model_path, adapter_path, reader=reader)
    if hf_dir:
        return reference.load_hf(hf_dir, base=model_path)
    return reference.load_gguf(reader, adapter_path)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the reference on the -t threads (restored afterwards: tests share the process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def compare(ref_model, llama_ar, prompt: dict, prompt_tokens: list[int], llama_tokens: list[int],
            max_tokens: int, stop_ids: list[int]) -> ReferenceRow:
    """`llama_tokens`: llama.cpp's greedy AR continuation of `prompt_tokens` (max_tokens, stopping at stop_ids)."""
    import torch

    from .. import reference

    with torch.no_grad():
        ref_logits = ref_model.forward_ar(prompt_tokens, ref_model.new_cache())[-1].numpy()
    llama_logits = llama_ar.next_token_logits(prompt_tokens)
    if ref_logits.shape != llama_logits.shape:
        raise PyorthrusError(f"the reference has {ref_logits.shape[0]} logits, llama.cpp {llama_logits.shape[0]}: "
                             "not the same model")
    log_ref, log_llama = _log_softmax(ref_logits), _log_softmax(llama_logits)
    kl = float(np.sum(np.exp(log_ref) * (log_ref - log_llama)))
    ref_tokens, _ = reference.greedy_generate(ref_model, prompt_tokens, max_tokens, stop_ids=stop_ids)
    a, b = ref_tokens, llama_tokens
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    divergence = None
    if prefix < min(len(a), len(b)):
        with torch.no_grad():
            row = ref_model.forward_ar(prompt_tokens + a[:prefix], ref_model.new_cache())[-1]
        divergence = {"position": prefix, "reference_token": a[prefix], "llama_token": b[prefix],
                      "reference_piece": llama_ar.detokenize([a[prefix]]),
                      "llama_piece": llama_ar.detokenize([b[prefix]]),
                      "reference_logit_margin": float(row[a[prefix]] - row[b[prefix]])}
    elif a != b:  # one stream stopped early
        divergence = {"position": prefix, "reference_token": a[prefix] if prefix < len(a) else None,
                      "llama_token": b[prefix] if prefix < len(b) else None, "reference_logit_margin": None}
    return ReferenceRow(prompt=prompt["prompt"], kind=prompt["kind"],
                        max_abs_logit_diff=float(np.max(np.abs(ref_logits.astype(np.float64) - llama_logits))),
                        top1_agree=int(np.argmax(ref_logits)) == int(np.argmax(llama_logits)),
                        kl_reference_llama=kl, identical=a == b, n_reference=len(a), n_llama=len(b),
                        matched_prefix=prefix, divergence=divergence)


def run(args, llama_ar, prompts: list[dict], decoded: list, progress: bool) -> dict:
    """`decoded`: per prompt, its tokens and llama.cpp's AR generation (check.Decoded), computed once for both
    checks."""
    from .. import assets

    model_path = args.model or assets.smollm2_gguf()
    stop_ids = llama_ar.engine.eog_tokens()
    with torch_threads(args.threads):
        ref_model = load(model_path, args.adapter, args.reference)
        rows = [compare(ref_model, llama_ar, p, d.prompt_tokens, d.ar.tokens, args.max_tokens, stop_ids)
                for p, d in tqdm(list(zip(prompts, decoded)), desc="reference", unit="prompt", disable=not progress,
                                 file=sys.stderr)]
    n = len(rows)
    summary = {"reference": args.reference or f"{model_path} dequantized to FP32", "prompts": n,
               "top1_agreement": sum(r.top1_agree for r in rows) / n,
               "max_abs_logit_diff": max(r.max_abs_logit_diff for r in rows),
               "mean_max_abs_logit_diff": sum(r.max_abs_logit_diff for r in rows) / n,
               "mean_kl": sum(r.kl_reference_llama for r in rows) / n,
               "max_kl": max(r.kl_reference_llama for r in rows),
               "trajectory_exact_match_rate": sum(r.identical for r in rows) / n,
               "mean_matched_prefix": sum(r.matched_prefix for r in rows) / n}
    return {"summary": summary, "prompts": [asdict(r) for r in rows]}


def print_report(report: dict) -> None:
    s = report["summary"]
    print(f"\nreference: {s['reference']}")
    print(f"{'kind':<5} {'top1':<4} {'max|dlogit|':>11} {'KL(ref||llama)':>14} {'prefix':>6}  divergence")
    for r in report["prompts"]:
        d = r["divergence"]
        margin = None if d is None or d["reference_logit_margin"] is None else round(d["reference_logit_margin"], 4)
        where = "" if d is None else (f"at {d['position']}: reference "
                                      f"{d.get('reference_piece', d['reference_token'])!r} vs llama.cpp "
                                      f"{d.get('llama_piece', d['llama_token'])!r}, reference margin {margin}")
        print(f"{r['kind']:<5} {'yes' if r['top1_agree'] else 'NO':<4} {r['max_abs_logit_diff']:>11.4f} "
              f"{r['kl_reference_llama']:>14.3g} {r['matched_prefix']:>6}  {where}")
    print(f"top-1 agreement {s['top1_agreement']:.1%}, max |logit diff| {s['max_abs_logit_diff']:.4f}, mean KL "
          f"{s['mean_kl']:.3g} (max {s['max_kl']:.3g}), greedy trajectories identical on "
          f"{s['trajectory_exact_match_rate']:.1%} of {s['prompts']} prompts, mean matched prefix "
          f"{s['mean_matched_prefix']:.1f} tokens")
