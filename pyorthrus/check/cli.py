"""`pyorthrus check`: does Orthrus decoding produce exactly what plain AR decoding of the same model produces?

Trajectory match (always): greedy Orthrus vs greedy AR in the same build, prompt by prompt. Where they part, the
report gives the position, both tokens and the AR logit margin between them there: a near-tie points at
floating-point batch effects (a GPU, the fast CPU flavour), a large margin at a bug.

On request, reusing those generations: benchmark accuracy of both (--task, tasks.py), llama.cpp AR vs the FP32
PyTorch reference (--reference, reference.py); and a distribution test of Orthrus sampling (--sampling,
sampling.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from . import reference, sampling, tasks
from ..cli_options import add_model_arguments, add_sampling_flags, check_arguments, open_model, sampling_options
from ..errors import PyorthrusError
from ..prompts import load as load_prompts

if TYPE_CHECKING:
    from ..streaming import Generation


@dataclass
class Trajectory:
    prompt: str
    kind: str
    identical: bool
    n_ar: int
    n_orthrus: int
    matched_prefix: int
    divergence: dict | None  # position, AR token, Orthrus token, AR logit margin between them
    tokens_per_cycle: float


@dataclass
class Decoded:
    """One prompt's tokens and both greedy generations; the task and reference checks reuse them."""
    prompt_tokens: list[int]
    ar: Generation
    orthrus: Generation


def decode(orthrus, ar, prompt: dict, max_tokens: int, chat: bool) -> Decoded:
    text = orthrus.chat_prompt([{"role": "user", "content": prompt["prompt"]}]) if chat else prompt["prompt"]
    tokens = orthrus.tokenize(text)
    return Decoded(tokens, ar.generate(tokens, max_tokens=max_tokens), orthrus.generate(tokens, max_tokens=max_tokens))


def trajectory(ar, prompt: dict, decoded: Decoded) -> Trajectory:
    a, b = decoded.ar.tokens, decoded.orthrus.tokens
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    divergence = None
    if a != b and prefix < min(len(a), len(b)):
        logits = ar.next_token_logits(decoded.prompt_tokens + a[:prefix])
        divergence = {"position": prefix, "ar_token": a[prefix], "orthrus_token": b[prefix],
                      "ar_piece": ar.detokenize([a[prefix]]), "orthrus_piece": ar.detokenize([b[prefix]]),
                      "ar_logit_margin": float(logits[a[prefix]] - logits[b[prefix]])}
    elif a != b:  # one stream stopped early: a length mismatch at `prefix`
        divergence = {"position": prefix, "ar_token": a[prefix] if prefix < len(a) else None,
                      "orthrus_token": b[prefix] if prefix < len(b) else None, "ar_logit_margin": None}
    return Trajectory(prompt=prompt["prompt"], kind=prompt["kind"], identical=a == b, n_ar=len(a), n_orthrus=len(b),
                      matched_prefix=prefix, divergence=divergence,
                      tokens_per_cycle=decoded.orthrus.stats.tokens_per_cycle)


def compare(orthrus, ar, prompt: dict, max_tokens: int, chat: bool) -> Trajectory:
    return trajectory(ar, prompt, decode(orthrus, ar, prompt, max_tokens, chat))


def summarize(rows: list[Trajectory]) -> dict:
    n = len(rows)
    return {"prompts": n, "exact_match_rate": sum(r.identical for r in rows) / n if n else 0.0,
            "mean_matched_prefix": sum(r.matched_prefix for r in rows) / n if n else 0.0,
            "mean_tokens_per_cycle": sum(r.tokens_per_cycle for r in rows) / n if n else 0.0}


EXAMPLES = """examples (ADAPTER for the embedded SmolLM2: pyorthrus/data/smollm2-135m-orthrus-k16.q8_0.gguf):
  pyorthrus check -a ADAPTER                        Orthrus == AR, token for token, on 12 chat/math/code prompts
  pyorthrus check -a ADAPTER --task gsm8k --limit 50 -n 256
                                                    ... on GSM8K benchmark problems, plus both accuracies
  pyorthrus check -a ADAPTER --task humaneval -n 384
                                                    ... on HumanEval, plus pass@1 (generated code runs in a child
                                                    process limited to 5 s and 1 GiB)
  pyorthrus check -a ADAPTER --reference --limit 4  ... plus llama.cpp vs the FP32 PyTorch reference (needs torch)
  pyorthrus check -a ADAPTER --sampling --temp 0.8 --top-p 0.95
                                                    ... plus a test that Orthrus sampling is lossless
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = """\
Check that Orthrus decoding reproduces plain AR decoding of the same model token for token (greedy, same
build), prompt by prompt; where they part, the first divergence and the AR logit margin there (near 0: a
floating-point near-tie, large: a bug). On request also:
  --task       accuracy of AR and Orthrus on GSM8K or HumanEval, 95% intervals, paired difference
  --reference  llama.cpp AR vs the FP32 PyTorch reference: how far the GGUF (quantization, kernels) moves
               the model
  --sampling   chi-square test that Orthrus sampling (lossless rejection sampling) draws from the AR
               distribution
Exit code 0 only if the exact-match rate reaches 1 - tolerance and, with --sampling, the test does not reject."""
    parser.epilog = EXAMPLES
    source = parser.add_argument_group("prompts").add_mutually_exclusive_group()
    source.add_argument("--prompts", default=None,
                        help="built-in set (mix: chat/math/code, chat, gsm8k, humaneval) or a JSONL file with "
                             "{\"prompt\": ...} rows (default: mix)")
    source.add_argument("--task", choices=tasks.TASKS, default=None,
                        help="use a benchmark's problems as the prompts and score both outputs: gsm8k (the "
                             "reserved benchmark split, first 200 test problems; final-number match) or humaneval "
                             "(pass@1 by the official harness, run in a child process)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--raw", action="store_true", help="use prompts as they are, without the chat template")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="fraction of prompts allowed to diverge before the exit code is 1 (default 0)")
    parser.add_argument("--reference", nargs="?", const="", default=None, metavar="HF_DIR",
                        help="also compare llama.cpp AR with the FP32 PyTorch reference on the same prompts: "
                             "next-token logits after each prompt (max |diff|, top-1, KL) and greedy trajectories. "
                             "Without HF_DIR the reference is the GGUF itself dequantized (llama.cpp's arithmetic "
                             "alone); with the original HF checkpoint directory, weight quantization counts too. "
                             "Needs torch (pip install 'pyorthrus[convert]')")
    parser.add_argument("--json", action="store_true", help="machine-readable report (no progress bars)")
    sampling = parser.add_argument_group(
        "sampling test (--sampling)",
        "N runs of P tokens of the first prompt with AR sampling, N with Orthrus sampling, one seed per run;\n"
        "per position a chi-square homogeneity test of the two token distributions (tokens seen < 10 times\n"
        "pooled); rejects when a p-value is below alpha / the number of positions tested (Bonferroni).")
    sampling.add_argument("--sampling", action="store_true", help="run the sampling test")
    sampling.add_argument("--seeds", type=int, default=200, help="runs per decoder, N (default 200)")
    sampling.add_argument("--positions", type=int, default=8, help="tokens per run, P (default 8)")
    sampling.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    sampling.add_argument("--seed", type=int, default=0, help="first seed: AR runs use seed ... seed+N-1, Orthrus "
                                                              "the next N")
    add_sampling_flags(sampling, temperature=1.0)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    progress = not args.json
    check_arguments(args)  # before the prompt sets and the reference load, not only before the model
    if args.limit is not None and args.limit < 1:
        raise PyorthrusError(f"--limit {args.limit}: must be >= 1")
    if args.reference is not None:
        reference.validate(args.reference)
    if args.sampling:
        sampling.validate(sampling_options(args), args.seeds, args.positions, args.alpha)
    prompts = (tasks.load_problems(args.task, args.limit) if args.task
               else load_prompts(args.prompts or "mix", args.limit))
    sections = {}
    with open_model(args) as orthrus:
        ar = orthrus.ar_view()
        decoded = [decode(orthrus, ar, p, args.max_tokens, not args.raw)
                   for p in tqdm(prompts, desc="check", unit="prompt", disable=not progress, file=sys.stderr)]
        rows = [trajectory(ar, p, d) for p, d in zip(prompts, decoded)]
        if args.reference is not None:
            sections["reference"] = reference.run(args, ar, prompts, decoded, progress)
        if args.sampling:
            sections["sampling"] = sampling.run(orthrus, ar, decoded[0].prompt_tokens, args.seeds,
                                                      args.positions, sampling_options(args), args.alpha, args.seed,
                                                      progress)
    if args.task:
        sections["task"] = tasks.score(args.task, prompts, decoded, progress)
    summary = summarize(rows)
    trajectories_pass = summary["exact_match_rate"] >= 1.0 - args.tolerance
    passed = trajectories_pass and sections.get("sampling", {}).get("passed", True)
    summary["passed"] = passed
    if args.json:
        print(json.dumps({"summary": summary, "prompts": [asdict(r) for r in rows], **sections}, indent=2))
        return 0 if passed else 1
    _print_trajectories(rows, summary, trajectories_pass)
    for name, printer in (("task", tasks.print_report), ("reference", reference.print_report),
                          ("sampling", sampling.print_report)):
        if name in sections:
            printer(sections[name])
    return 0 if passed else 1


def _print_trajectories(rows: list[Trajectory], summary: dict, passed: bool) -> None:
    print(f"{'kind':<5} {'match':<6} {'prefix':>6} {'tok/cyc':>7}  divergence")
    for r in rows:
        d = r.divergence
        margin = None if d is None or d["ar_logit_margin"] is None else round(d["ar_logit_margin"], 4)
        where = "" if d is None else (f"at {d['position']}: AR {d.get('ar_piece', d['ar_token'])!r} vs Orthrus "
                                      f"{d.get('orthrus_piece', d['orthrus_token'])!r}, AR margin {margin}")
        print(f"{r.kind:<5} {'yes' if r.identical else 'NO':<6} {r.matched_prefix:>6} {r.tokens_per_cycle:>7.2f}"
              f"  {where}")
    print(f"exact match {summary['exact_match_rate']:.1%} of {summary['prompts']} prompts, mean matched prefix "
          f"{summary['mean_matched_prefix']:.1f} tokens, {summary['mean_tokens_per_cycle']:.2f} tokens/cycle: "
          f"{'PASS' if passed else 'FAIL'}")
