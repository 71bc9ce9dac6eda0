"""Held-out tokens/cycle of an Orthrus adapter for SmolLM2-135M, per kind of prompt and per K, in llama.cpp.

Kinds (none of them is ever trained on; see bench/train_prompts.py):
  chat        pyorthrus.prompts.CHAT_PROMPTS (everyday questions and requests, written for pyorthrus)
  structured  pyorthrus.prompts.STRUCTURED_PROMPTS (lists, tables, JSON, written for pyorthrus)
  code        pyorthrus.prompts.CODE_PROMPTS, then HumanEval problems (benchmark-only)
  math        reserved GSM8K test problems [0, 200), from --first on
Chat template with the system message of the training data, greedy, --max-tokens new tokens, the real C loop.
Tokens per cycle are pooled (all tokens / all cycles) per kind and K; --reference N re-runs the first N rows of
the largest K in the PyTorch reference, whose tokens per cycle should come close (the float reference and the Q4_1
kernels write different greedy text after a while, so the drafts are judged on different streams).

    python bench/train_eval.py ADAPTER.gguf                                  # 8 prompts of each kind x K 4, 8, 16
    python bench/train_eval.py ADAPTER.gguf --kinds math --ks 16 --prompts 10  # the MODEL_CARD growth curve
    python bench/train_eval.py ADAPTER.gguf --ks 4,8,16,16t3,16t7,16t15,16t31,16t63  # chains vs trees (issue 34)

A mode KtN verifies a tree of N draft nodes plus the root per pass (N+1 tokens); each tree is set against the chain
whose verify pass is the same size, or the largest chain below it (the trained K bounds a chain).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pyorthrus.cli_options import comma_list
from train_data import SYSTEM
from train_prompts import heldout_gsm8k

KINDS = ("chat", "structured", "code", "math")


def eval_prompts(kind: str, n: int, first_gsm8k: int = 0) -> list[str]:
    from pyorthrus import prompts

    if kind == "chat":
        texts = prompts.CHAT_PROMPTS
    elif kind == "structured":
        texts = prompts.STRUCTURED_PROMPTS
    elif kind == "code":
        texts = prompts.CODE_PROMPTS + [row["prompt"] for row in prompts.load("humaneval")]
    else:
        texts = heldout_gsm8k()[first_gsm8k:]
    return texts[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--kinds", type=comma_list(choices=KINDS), default=list(KINDS),
                        help="comma-separated, default: all")
    parser.add_argument("--ks", default="4,8,16",
                        help="decode modes, comma-separated: block sizes K and trees KtN (K drafting, N nodes)")
    parser.add_argument("--prompts", type=int, default=8,
                        help="prompts per kind (default 8: every chat and structured prompt there is; the first "
                             "4 of each kind read about 0.1 tokens/cycle higher than all 8)")
    parser.add_argument("--first", type=int, default=0, help="first reserved GSM8K problem (kind math)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="also run the PyTorch reference on the first N prompts at the largest K")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    from pyorthrus import Orthrus
    from pyorthrus.assets import smollm2_gguf
    from pyorthrus.cli_options import mode_options, parse_modes

    ks = parse_modes(args.ks, "--ks")

    m = Orthrus(smollm2_gguf(), args.adapter, n_ctx=1024, n_threads=args.threads)
    rows = []
    t0 = time.time()
    for kind in args.kinds:
        for i, question in enumerate(eval_prompts(kind, args.prompts, args.first)):
            prompt = m.chat_prompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
            for k in ks:
                g = m.generate(prompt, max_tokens=args.max_tokens, **mode_options(k))
                rows.append({"kind": kind, "index": i, "block_size": k, "tokens": len(g.tokens),
                             "cycles": g.stats.n_cycles, "tokens_per_cycle": g.stats.tokens_per_cycle,
                             "offchain": g.stats.n_offchain, "prompt": prompt, "out_tokens": g.tokens})
                print(f"{kind}[{i}] {k}: {len(g.tokens)} tokens, {g.stats.n_cycles} cycles, "
                      f"{g.stats.tokens_per_cycle:.2f} tokens/cycle", flush=True)
    table = {}
    for kind in [*args.kinds, "all"]:
        for k in ks:
            part = [r for r in rows if r["block_size"] == k and kind in (r["kind"], "all")]
            table.setdefault(kind, {})[k] = sum(r["tokens"] for r in part) / max(1, sum(r["cycles"] for r in part))
    gains = tree_gains(table, ks)
    result = {"adapter": str(args.adapter), "prompts_per_kind": args.prompts, "max_tokens": args.max_tokens,
              "tokens_per_cycle": table, "tree_gains": gains, "wall_s": time.time() - t0}
    names = [f"K={k}" if isinstance(k, int) else f"{k} ({mode_options(k)['tree'] + 1} tok)" for k in ks]
    print("\n| kind | " + " | ".join(names) + " |\n|---|" + "---:|" * len(ks))
    for kind, per_k in table.items():
        print(f"| {kind} | " + " | ".join(f"{per_k[k]:.2f}" for k in ks) + " |")
    for kind, per_mode in gains.items():
        print(f"{kind}: " + ", ".join(f"{mode} {g * 100:+.0f}% over {chain}" for mode, (chain, g) in per_mode.items()))
    if args.reference:
        largest = max(k for k in ks if isinstance(k, int))
        result["reference"] = _reference(m, [r for r in rows if r["block_size"] == largest][:args.reference], args)
    if args.json:
        for r in rows:
            r.pop("prompt"), r.pop("out_tokens")
        result["per_prompt"] = rows
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def tree_gains(table: dict, modes: list) -> dict:
    """Per kind, each tree mode's tokens per cycle over the chain's whose verify pass is the same size (or the largest
    chain below it): {kind: {mode: (chain, gain)}}."""
    from pyorthrus.cli_options import mode_options

    chains = sorted(k for k in modes if isinstance(k, int))
    gains: dict = {}
    for mode in modes:
        tree = mode_options(mode).get("tree")
        below = [k for k in chains if k <= (tree or 0) + 1]
        if tree and below:
            for kind, per_mode in table.items():
                gains.setdefault(kind, {})[mode] = (below[-1], per_mode[mode] / per_mode[below[-1]] - 1.0)
    return gains


def _reference(m, rows: list[dict], args) -> list[dict]:
    import torch

    from pyorthrus import reference
    from pyorthrus.assets import smollm2_gguf

    torch.set_num_threads(args.threads)
    model = reference.load_gguf(smollm2_gguf(), args.adapter)
    stop_ids = m.engine.eog_tokens()
    out = []
    for r in rows:
        toks, stats = reference.greedy_generate(model, m.tokenize(r["prompt"]), args.max_tokens,
                                                block_size=r["block_size"], stop_ids=stop_ids)
        out.append({"kind": r["kind"], "index": r["index"], "tokens_per_cycle": stats.tokens_per_cycle,
                    "llama_cpp_tokens_per_cycle": r["tokens_per_cycle"], "same_tokens": toks == r["out_tokens"]})
        print(f"reference {r['kind']}[{r['index']}] K={r['block_size']}: {stats.tokens_per_cycle:.2f} tokens/cycle "
              f"(llama.cpp {r['tokens_per_cycle']:.2f}); same tokens: {out[-1]['same_tokens']}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
