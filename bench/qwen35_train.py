"""The Qwen3.5 trainer on a device against the CPU, side by side in one run (issue 37).

The same random Orthrus-Qwen3.5 checkpoint (a shape of pyorthrus.bench.shapes, twins = copies of the AR weights, the
Qwen3 tokenizer's 151,936 embedding rows) trains for a few steps on random documents, once on the CPU and once on
--device, with the same seed: the loss curves must agree (float32 on both), and each device's seconds per step are
printed. Then the device's checkpoint converts to a merged file, which llama.cpp decodes on the CPU (the trained
weights are under test here, not the GPU's kernels): greedy Orthrus must equal AR. Exit status 1 when a check fails.

    python bench/qwen35_train.py --device cuda --shape tiny-qwen35 --steps 10
    python bench/qwen35_train.py --device cuda --shape qwen3.5-4b --layers 8 --steps 5 --cpu-steps 2 --seq-len 512
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pyorthrus import Orthrus
from pyorthrus.bench.shapes import SHAPES, Qwen35Shape
from pyorthrus.convert import convert_checkpoint
from pyorthrus.testing.qwen35 import write_tiny_orthrus_qwen35_checkpoint
from pyorthrus.train.config import TrainConfig
from pyorthrus.train.loop import train


def train_on(ckpt: Path, data: Path, out: Path, device: str, steps: int, args) -> dict:
    cfg = TrainConfig(base=str(ckpt), data=[str(data)], out=str(out), block_size=args.block_size,
                      seq_len=args.seq_len, batch_size=args.batch_size, max_steps=steps, lr=1e-3, warmup_steps=1,
                      log_every=1, device=device, progress=False)
    summary = train(cfg)
    summary["s_per_step"] = summary["wall_s"] / summary["steps"]  # the steps alone, loading left out
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="tiny-qwen35", choices=[n for n, s in SHAPES.items()
                                                                if isinstance(s, Qwen35Shape) and not s.experts])
    ap.add_argument("--layers", type=int, help="the shape's width with this many layers (a multiple of 4: every "
                                               "fourth is attention), to fit a real width in a short run")
    ap.add_argument("--steps", type=int, default=10, help="steps on --device")
    ap.add_argument("--cpu-steps", type=int, default=None, help="steps on the CPU (default --steps; 0: none)")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.cpu_steps = args.steps if args.cpu_steps is None else args.cpu_steps
    with tempfile.TemporaryDirectory(prefix="qwen35-train-") as work:  # a real width's checkpoints take GBs
        return run(args, Path(work))


def run(args, work: Path) -> int:
    """Make the checkpoint and data in `work`, train on each device, compare, decode; the exit status."""
    shape = SHAPES[args.shape] if args.layers is None else replace(SHAPES[args.shape], layers=args.layers)
    ckpt = write_tiny_orthrus_qwen35_checkpoint(work / "ckpt", config=shape, dtype=torch.float32,
                                                block_size=args.block_size, logit_scale=6.0)
    rng = np.random.default_rng(0)
    data = work / "docs.jsonl"
    data.write_text("".join(json.dumps({"ids": rng.integers(0, 151000, size=args.seq_len).tolist()}) + "\n"
                            for _ in range(8)))
    runs = {args.device: train_on(ckpt, data, work / args.device, args.device, args.steps, args)}
    if args.device != "cpu" and args.cpu_steps:
        runs["cpu"] = train_on(ckpt, data, work / "cpu", "cpu", args.cpu_steps, args)
    report = {"shape": args.shape, "layers": shape.layers, "block_size": args.block_size, "seq_len": args.seq_len,
              "batch_size": args.batch_size,
              "runs": {d: {"s_per_step": r["s_per_step"], "losses": [h["loss"] for h in r["history"]]}
                       for d, r in runs.items()}}
    for device, run in report["runs"].items():
        print(f"{device:>6}: {run['s_per_step']:.2f} s/step, losses " + " ".join(f"{x:.4f}" for x in run["losses"]))
    ok = True
    if len(runs) == 2:
        n = min(args.steps, args.cpu_steps)
        a, b = (np.array(report["runs"][d]["losses"][:n]) for d in (args.device, "cpu"))
        report["max_loss_rel_diff"] = float(np.max(np.abs(a - b) / np.abs(b)))
        ok = report["max_loss_rel_diff"] < 1e-3
        speedup = runs["cpu"]["s_per_step"] / runs[args.device]["s_per_step"]
        print(f"losses {args.device} vs cpu: max relative difference {report['max_loss_rel_diff']:.2e} "
              f"({'ok' if ok else 'FAIL'}); {args.device} steps are {speedup:.1f}x as fast as the CPU's")
    merged = convert_checkpoint(work / args.device, merged_out=work / "merged.gguf", outtype="f32",
                                progress=False)["merged"]
    with Orthrus(merged, n_ctx=512) as model:
        prompt = rng.integers(0, 151000, size=8).tolist()
        got = model.generate(prompt, max_tokens=32, block_size=min(8, args.block_size))
        report["decodes_as_ar"] = got.tokens == model.ar_view().generate(prompt, max_tokens=32).tokens
    print(f"trained on {args.device}, converted, decoded by llama.cpp: greedy Orthrus "
          + ("= AR" if report["decodes_as_ar"] else "!= AR (FAIL)"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok and report["decodes_as_ar"] else 1


if __name__ == "__main__":
    sys.exit(main())
