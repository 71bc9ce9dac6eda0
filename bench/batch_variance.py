"""Is this llama.cpp build batch-invariant? Plain AR logits (no adapter, no Orthrus) of K tokens decoded as one
batch vs the same K tokens decoded one at a time, after the same prefix, SmolLM2-135M-Instruct per weight type.

Orthrus verifies a block of K tokens in one pass and plain decoding computes them one per step, so greedy Orthrus
equals greedy AR bit for bit exactly where this difference is 0 (the strict CPU build); elsewhere (GPU kernels, the
fast CPU flavour) outputs may part at near-ties no larger than it. This measures the backend, not Orthrus.

    python bench/batch_variance.py                      # CPU, strict settings
    python bench/batch_variance.py -ngl -1 --fa off,on  # every layer on the GPU
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pyorthrus.testing import process


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", default="Q4_1,F16,Q8_0", help="weight types (Q4_1 is the shipped file)")
    ap.add_argument("--ks", default="2,4,8,16,32", help="batch sizes compared with single steps")
    ap.add_argument("--prompts", type=int, default=4, help="GSM8K prompts (each gives the prefix and the tokens)")
    ap.add_argument("--fa", default="off", help="flash attention: off, on or off,on")
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "pyorthrus" / "fidelity"),
                    help="where quantized copies of the model are kept")
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args()


args = _parse()
process.configure(strict=args.n_gpu_layers == 0)  # before llama_cpp is imported

import numpy as np  # noqa: E402

from pyorthrus.testing.harness import Context, Model  # noqa: E402
from pyorthrus.build import installed_build_info  # noqa: E402
from pyorthrus.prompts import load as load_prompts  # noqa: E402
from smollm2_quants import model_file  # noqa: E402


def compare(ctx: Context, prefix: list[int], tokens: list[int]) -> tuple[float, int]:
    """Max |logit difference| over the K rows and vocabulary, and how many rows' argmax differ."""
    ctx.prefill(prefix + [0])  # caches prefix; the block starts at position len(prefix)
    assert ctx.decode(tokens, len(prefix), all_logits=True) == 0
    batched = ctx.logits_rows(len(tokens))
    ctx.seq_rm(len(prefix))
    single = []
    for i, t in enumerate(tokens):
        assert ctx.decode([t], len(prefix) + i) == 0
        single.append(ctx.logits(-1))
    single = np.stack(single)
    return float(np.abs(batched - single).max()), int((batched.argmax(1) != single.argmax(1)).sum())


def main() -> int:
    build = installed_build_info()["build"] or {}
    ks = [int(k) for k in args.ks.split(",")]
    questions = [row["prompt"] for row in load_prompts("gsm8k", args.prompts)]
    rows = []
    print(f"build {build.get('backend')} ({build.get('flavour')}), n_gpu_layers={args.n_gpu_layers}; "
          f"{len(questions)} prompts; max |logit(batch of K) - logit(K single steps)|, rows whose argmax differ")
    for quant in args.quants.split(","):
        model = Model(model_file(quant, Path(args.work), args.threads), use_extra_bufts=args.n_gpu_layers != 0,
                      n_gpu_layers=args.n_gpu_layers)
        chats = [model.chat_prompt(q) for q in questions]
        for fa in args.fa.split(","):
            ctx = Context(model, n_ctx=1024, n_batch=max(64, max(ks)), flash_attn=fa == "on",
                          n_threads=args.threads)
            for K in ks:
                worst, flips, rows_total = 0.0, 0, 0
                for toks in chats:
                    prefix, block = toks[:-K], toks[-K:]  # the prompt's own last K tokens as the block
                    diff, n_flips = compare(ctx, prefix, block)
                    worst, flips, rows_total = max(worst, diff), flips + n_flips, rows_total + K
                rows.append(dict(quant=quant, fa=fa, K=K, max_abs_diff=worst, argmax_flips=flips, rows=rows_total))
                print(f"{quant:6} fa={fa:3} K={K:<3} max |diff| {worst:.6f}  "
                      f"argmax differs in {flips}/{rows_total} rows", flush=True)
            ctx.close()
        model.close()
    if args.json:
        Path(args.json).write_text(json.dumps(dict(build=build, n_gpu_layers=args.n_gpu_layers, results=rows),
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
