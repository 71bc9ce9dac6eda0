"""How far can the diff weights be quantized before drafts stop being accepted? (issue 16)

The shipped SmolLM2-135M adapter (Q8_0) is rewritten with its diff weight matrices in each --types type (the Q8_0
values dequantized, then quantized with gguf-py; norms stay F32), and each copy decodes the reserved GSM8K prompts
greedily in llama.cpp at each --ks block size: tokens per cycle, and whether the output is still AR's (it must be:
the diff weights decide only which drafts are proposed). Q4_K and the other K-quants need rows of 256 values;
SmolLM2's are 576 wide, so they cannot hold its diff weights (llama.cpp's quantizer falls back to Q5_0 there).

    python bench/diff_precision.py --out bench/results/diff_precision_smollm2     # 20 prompts x 128 tokens, K 4, 16
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize, quantize
from tqdm import tqdm

from pyorthrus import Orthrus, assets, prompts
from pyorthrus.cli_options import comma_list
from pyorthrus.convert.base_gguf import copied_metadata
from pyorthrus.convert.gguf_out import PlannedTensor, tensor_nbytes, uint32, write_gguf
from pyorthrus.gguf_meta import gguf_field, open_reader


def requantized_adapter(source: Path, qtype: gguf.GGMLQuantizationType, out: Path) -> Path:
    """`source` with every 2-D tensor stored as `qtype` (1-D tensors unchanged)."""
    reader = open_reader(source)
    planned = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if len(shape) == 1:
            planned.append(PlannedTensor(t.name, shape, t.tensor_type, int(t.n_bytes),
                                         lambda t=t: np.asarray(t.data).view(np.uint8).reshape(-1)))
            continue
        values = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        planned.append(PlannedTensor(t.name, shape, qtype, tensor_nbytes(shape, qtype),
                                     lambda v=values: np.asarray(quantize(v, qtype)).view(np.uint8).reshape(-1)))
    mask = gguf_field(reader, "tokenizer.ggml.mask_token_id")  # copied_metadata leaves it to the writer
    write_gguf(out, gguf_field(reader, "general.architecture"),
               copied_metadata(reader) + [uint32("tokenizer.ggml.mask_token_id", mask)], planned, progress=False)
    return out


def measure(adapter: Path, texts: list[str], ks: list[int], max_tokens: int, threads: int,
            ar_tokens: dict[int, list[int]]) -> dict:
    row = {}
    with Orthrus(assets.smollm2_gguf(), adapter, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                 system_prompt=assets.EMBEDDED_SYSTEM_PROMPT) as llm:
        for k in ks:
            tokens = cycles = identical = 0
            for i, text in enumerate(texts):
                prompt = llm.tokenize(llm.chat_prompt([{"role": "user", "content": text}]))
                if i not in ar_tokens:
                    ar_tokens[i] = llm.ar_view().generate(prompt, max_tokens=max_tokens).tokens
                out = llm.generate(prompt, max_tokens=max_tokens, block_size=k)
                tokens, cycles = tokens + len(out.tokens), cycles + out.stats.n_cycles
                identical += out.tokens == ar_tokens[i]
            row[k] = {"tokens_per_cycle": tokens / cycles, "identical": identical, "prompts": len(texts)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", type=comma_list(), default="Q8_0,F16,Q5_0,Q4_1,Q4_0")
    ap.add_argument("--ks", type=comma_list(int), default="4,16")
    ap.add_argument("--n-prompts", type=int, default=20)
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    ks = args.ks
    texts = [p["prompt"] for p in prompts.load("gsm8k", args.n_prompts)]
    shipped = assets.default_adapter()
    results, ar_tokens = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name in tqdm(args.types, desc="diff types", file=sys.stderr):
            qtype = gguf.GGMLQuantizationType[name]
            adapter = shipped if name == "Q8_0" else \
                requantized_adapter(shipped, qtype, Path(work) / f"adapter.{name}.gguf")
            results[name] = {"bytes": adapter.stat().st_size,
                             "k": measure(adapter, texts, ks, args.max_tokens, args.threads, ar_tokens)}
    report = {"base": str(assets.smollm2_gguf()), "adapter": str(shipped), "prompts": f"gsm8k x {len(texts)}",
              "max_tokens": args.max_tokens, "ks": ks, "results": results}
    lines = [f"# Diff-weight precision: SmolLM2-135M Q4_1 + the shipped adapter ({shipped.name}), requantized",
             "", f"Reserved GSM8K prompts x {len(texts)}, {args.max_tokens} tokens, greedy, strict CPU build; the "
             "Q8_0 values are the source of every other type (F16 holds them exactly).", "",
             "| diff weights | adapter MB | " + " | ".join(f"tokens/cycle K={k}" for k in ks)
             + " | identical to AR |", "|---|---:|" + "---:|" * len(ks) + "---:|"]
    for name, r in results.items():
        same = sum(r["k"][k]["identical"] for k in ks)
        lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} | "
                     + " | ".join(f"{r['k'][k]['tokens_per_cycle']:.2f}" for k in ks)
                     + f" | {same}/{len(ks) * len(texts)} |")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
