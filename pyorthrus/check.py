"""`pyorthrus check`: does Orthrus decoding produce exactly what plain AR decoding of the same model produces?

Trajectory match: greedy Orthrus vs greedy AR in the same build, prompt by prompt. Where they part, the report
gives the position, both tokens and the AR logit margin between them there: a near-tie points at floating-point
batch effects (a GPU, the fast CPU flavour), a large margin at a bug.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from tqdm import tqdm

from .generate import add_model_arguments, open_model
from .prompts import load as load_prompts


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


def compare(orthrus, ar, prompt: dict, max_tokens: int, chat: bool) -> Trajectory:
    text = orthrus.chat_prompt([{"role": "user", "content": prompt["prompt"]}]) if chat else prompt["prompt"]
    tokens = orthrus.tokenize(text)
    expected = ar.generate(tokens, max_tokens=max_tokens)
    got = orthrus.generate(tokens, max_tokens=max_tokens)
    a, b = expected.tokens, got.tokens
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    divergence = None
    if a != b and prefix < min(len(a), len(b)):
        logits = ar.next_token_logits(tokens + a[:prefix])
        divergence = {"position": prefix, "ar_token": a[prefix], "orthrus_token": b[prefix],
                      "ar_piece": ar.detokenize([a[prefix]]), "orthrus_piece": ar.detokenize([b[prefix]]),
                      "ar_logit_margin": float(logits[a[prefix]] - logits[b[prefix]])}
    elif a != b:  # one stream stopped early: a length mismatch at `prefix`
        divergence = {"position": prefix, "ar_token": a[prefix] if prefix < len(a) else None,
                      "orthrus_token": b[prefix] if prefix < len(b) else None, "ar_logit_margin": None}
    return Trajectory(prompt=prompt["prompt"], kind=prompt["kind"], identical=a == b, n_ar=len(a), n_orthrus=len(b),
                      matched_prefix=prefix, divergence=divergence, tokens_per_cycle=got.stats.tokens_per_cycle)


def summarize(rows: list[Trajectory]) -> dict:
    n = len(rows)
    return {"prompts": n, "exact_match_rate": sum(r.identical for r in rows) / n if n else 0.0,
            "mean_matched_prefix": sum(r.matched_prefix for r in rows) / n if n else 0.0,
            "mean_tokens_per_cycle": sum(r.tokens_per_cycle for r in rows) / n if n else 0.0}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check that Orthrus decoding reproduces plain AR decoding of the same model token for "
                          "token (greedy, same build). Exit code 0 only if the exact-match rate reaches "
                          "1 - tolerance.")
    parser.add_argument("--prompts", default="mix",
                        help="built-in set (mix: chat/math/code, chat, gsm8k, humaneval) or a JSONL file with "
                             "{\"prompt\": ...} rows (default: mix)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--raw", action="store_true", help="use prompts as they are, without the chat template")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="fraction of prompts allowed to diverge before the exit code is 1 (default 0)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts, args.limit)
    with open_model(args) as orthrus:
        ar = orthrus.ar_view()
        rows = [compare(orthrus, ar, p, args.max_tokens, not args.raw)
                for p in tqdm(prompts, desc="check", unit="prompt", disable=args.json, file=sys.stderr)]
    summary = summarize(rows)
    passed = summary["exact_match_rate"] >= 1.0 - args.tolerance
    summary["passed"] = passed
    if args.json:
        print(json.dumps({"summary": summary, "prompts": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"{'kind':<5} {'match':<6} {'prefix':>6} {'tok/cyc':>7}  divergence")
        for r in rows:
            d = r.divergence
            where = "" if d is None else (f"at {d['position']}: AR {d.get('ar_piece', d['ar_token'])!r} vs Orthrus "
                                          f"{d.get('orthrus_piece', d['orthrus_token'])!r}, AR margin "
                                          f"{d['ar_logit_margin'] if d['ar_logit_margin'] is None else round(d['ar_logit_margin'], 4)}")
            print(f"{r.kind:<5} {'yes' if r.identical else 'NO':<6} {r.matched_prefix:>6} {r.tokens_per_cycle:>7.2f}"
                  f"  {where}")
        print(f"exact match {summary['exact_match_rate']:.1%} of {summary['prompts']} prompts, mean matched prefix "
              f"{summary['mean_matched_prefix']:.1f} tokens, {summary['mean_tokens_per_cycle']:.2f} tokens/cycle: "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1
