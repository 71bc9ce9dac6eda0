"""`pyorthrus demo`: the embedded default (SmolLM2-135M-Instruct + the shipped Orthrus adapter) on this machine.

Each prompt runs twice on the same model and context, interleaved: plain AR decoding, then Orthrus. The demo shows
the answer once, whether the two token streams are identical, tokens per cycle and the measured speedup.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import assets
from .generate import block_size_argument

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run SmolLM2-135M-Instruct with the shipped Orthrus adapter on a few prompts, AR and "
                          "Orthrus side by side; shows the text, token identity, tokens per cycle and speedup.")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate per prompt")
    parser.add_argument("-k", "--block-size", type=block_size_argument, default=None, metavar="K|auto",
                        help="Orthrus block size (default: trained K), or 'auto' (per cycle, from measured costs)")
    parser.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from .model import Orthrus

    model_path, adapter_path = assets.smollm2_gguf(), assets.default_adapter()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    say(f"model   {model_path.name}\nadapter {adapter_path.name}")
    rows = []
    with Orthrus(model_path, adapter_path, block_size=args.block_size, n_ctx=2048, n_threads=args.threads) as llm:
        ar = llm.ar_view()
        for prompt in DEMO_PROMPTS:
            tokens = llm.tokenize(llm.chat_prompt([{"role": "user", "content": prompt}]))
            plain = ar.generate(tokens, max_tokens=args.max_tokens)
            fast = llm.generate(tokens, max_tokens=args.max_tokens)
            row = {"prompt": prompt, "text": fast.text, "identical": fast.tokens == plain.tokens,
                   "tokens": len(fast.tokens), "tokens_per_cycle": fast.stats.tokens_per_cycle,
                   "ar_steps": fast.stats.n_ar_steps,
                   "ar_tok_s": plain.stats.tokens_per_second, "orthrus_tok_s": fast.stats.tokens_per_second,
                   "speedup": fast.stats.tokens_per_second / plain.stats.tokens_per_second}
            rows.append(row)
            ar_steps = f", {row['ar_steps']} AR steps" if row["ar_steps"] else ""  # chosen by -k auto
            say(f"\n>>> {prompt}\n{fast.text.strip()}\n"
                f"[{row['tokens']} tokens | identical to AR: {'yes' if row['identical'] else 'NO'} | "
                f"{row['tokens_per_cycle']:.2f} tokens/cycle (K={llm.block_size}){ar_steps} | "
                f"AR {row['ar_tok_s']:.1f} tok/s, "
                f"Orthrus {row['orthrus_tok_s']:.1f} tok/s, {row['speedup']:.2f}x]")
    total_ar = sum(r["tokens"] / r["ar_tok_s"] for r in rows)
    total_orthrus = sum(r["tokens"] / r["orthrus_tok_s"] for r in rows)
    summary = {"all_identical": all(r["identical"] for r in rows), "speedup": total_ar / total_orthrus,
               "mean_tokens_per_cycle": sum(r["tokens_per_cycle"] for r in rows) / len(rows)}
    if args.json:
        print(json.dumps({"model": str(model_path), "adapter": str(adapter_path), "summary": summary,
                          "prompts": rows}, indent=2))
    else:
        print(f"\nOrthrus output identical to AR on all prompts: {'yes' if summary['all_identical'] else 'NO'}; "
              f"{summary['mean_tokens_per_cycle']:.2f} tokens/cycle; speedup on this machine "
              f"{summary['speedup']:.2f}x (see `pyorthrus bench` for why a CPU caps it)", file=sys.stderr)
    return 0 if summary["all_identical"] else 1
