"""Held-out tokens/cycle of an Orthrus adapter for SmolLM2-135M, measured with the real C loop (llama.cpp).

Prompts: reserved GSM8K test problems [0, 200) (never trained on; see bench/train_data.py), chat template with the
same system message as the training data. Greedy, 128 new tokens.

    python bench/train_eval.py ADAPTER.gguf --prompts 10 [--reference]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from train_data import SYSTEM, heldout_gsm8k  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--first", type=int, default=0, help="first reserved GSM8K problem to use")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="also run the PyTorch reference on the first N prompts")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from pyorthrus import Orthrus
    from pyorthrus.assets import smollm2_gguf

    m = Orthrus(smollm2_gguf(), args.adapter, block_size=args.block_size, n_ctx=1024, n_threads=args.threads)
    questions = heldout_gsm8k()[args.first:args.first + args.prompts]
    rows = []
    t0 = time.time()
    for i, q in enumerate(questions):
        prompt = m.chat_prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
        g = m.generate(prompt, max_tokens=args.max_tokens)
        rows.append({"problem": args.first + i, "tokens": len(g.tokens), "cycles": g.stats.n_cycles,
                     "tokens_per_cycle": g.stats.tokens_per_cycle, "prompt": prompt, "out_tokens": g.tokens})
        print(f"gsm8k[{args.first + i}]: {len(g.tokens)} tokens, {g.stats.n_cycles} cycles, "
              f"{g.stats.tokens_per_cycle:.2f} tokens/cycle", flush=True)
    total_tok = sum(r["tokens"] for r in rows)
    total_cyc = sum(r["cycles"] for r in rows)
    result = {"adapter": str(args.adapter), "block_size": args.block_size, "prompts": len(rows),
              "tokens": total_tok, "cycles": total_cyc, "tokens_per_cycle": total_tok / max(1, total_cyc),
              "mean_tokens_per_cycle_per_prompt": sum(r["tokens_per_cycle"] for r in rows) / max(1, len(rows)),
              "wall_s": time.time() - t0}
    print(json.dumps({k: v for k, v in result.items()}, indent=2))
    if args.reference:
        import torch

        from pyorthrus import reference

        torch.set_num_threads(args.threads)
        model = reference.load_gguf(smollm2_gguf(), args.adapter)
        ref = []
        for r in rows[:args.reference]:
            ids = m.tokenize(r["prompt"]) if isinstance(r["prompt"], str) else r["prompt"]
            toks, stats = reference.greedy_generate(model, ids, args.max_tokens, block_size=args.block_size,
                                                    stop_ids=[2])
            ref.append({"problem": r["problem"], "tokens_per_cycle": stats.tokens_per_cycle,
                        "same_tokens_as_llama_cpp": toks == r["out_tokens"][:len(toks)]})
            print(f"reference gsm8k[{r['problem']}]: {stats.tokens_per_cycle:.2f} tokens/cycle "
                  f"(llama.cpp {r['tokens_per_cycle']:.2f}); same tokens: {ref[-1]['same_tokens_as_llama_cpp']}",
                  flush=True)
        result["reference"] = ref
    if args.json:
        for r in rows:
            r.pop("prompt"), r.pop("out_tokens")
        result["per_prompt"] = rows
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
