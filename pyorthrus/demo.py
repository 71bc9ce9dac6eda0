"""`pyorthrus demo`: the embedded default model on this machine, no arguments needed."""
from __future__ import annotations

import argparse
import json
import time

from . import assets

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=96, help="tokens to generate per prompt")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import llama_cpp

    model_path = assets.smollm2_gguf()
    llm = llama_cpp.Llama(str(model_path), n_ctx=1024, n_threads=args.threads, seed=0, verbose=False)
    results = []
    for prompt in DEMO_PROMPTS:
        start = time.perf_counter()
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], temperature=0.0,
                                           max_tokens=args.max_tokens)
        elapsed = time.perf_counter() - start
        n_tokens = reply["usage"]["completion_tokens"]
        results.append({"prompt": prompt, "text": reply["choices"][0]["message"]["content"],
                        "tokens": n_tokens, "seconds": elapsed, "tok_per_s": n_tokens / elapsed})
        if not args.json:
            print(f"\n>>> {prompt}\n{results[-1]['text']}\n[{n_tokens} tokens, {n_tokens / elapsed:.1f} tok/s]")
    if args.json:
        print(json.dumps({"model": str(model_path), "results": results}, indent=2))
    return 0
