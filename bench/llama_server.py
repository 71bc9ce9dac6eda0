"""llama-server side by side: plain AR, its n-gram speculation and `--spec-type orthrus` (patch 0020) at several K,
at 1, 2 and 4 slots, on one machine in one run (the same binary, the same prompts, greedy).

    pyorthrus build --server bin                      # once: bin/llama-server from the patched tree
    python bench/llama_server.py bin/llama-server --out bench/results/llama_server_cpu

Per configuration and slot count: the prompts are sent by as many concurrent clients as there are slots; reported
are the aggregate throughput (completion tokens of all requests / wall time), the median per-request decode speed
(the server's own `predicted_per_second`), the draft acceptance (`draft_n_accepted / draft_n`), and whether every
reply equals plain AR's. The device is named in the report. SmolLM2-135M Q4_1 + the shipped adapter by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pyorthrus import assets, prompts as prompt_sets
from pyorthrus.bench.device import accelerators, cpu_name
from pyorthrus.files import atomic_write

SYSTEM = {"role": "system", "content": assets.EMBEDDED_SYSTEM_PROMPT}


def configurations(ks: list[int]) -> dict[str, list[str]]:
    """Name -> llama-server arguments of each decoding configuration."""
    adapter = ["--orthrus-adapter", str(assets.default_adapter())]
    configs = {"ar": [], "ngram-simple": ["--spec-type", "ngram-simple"], "ngram-mod": ["--spec-type", "ngram-mod"]}
    for k in ks:
        configs[f"orthrus-k{k}"] = ["--spec-type", "orthrus", *adapter, "--spec-draft-n-max", str(k - 1)]
    return configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary: Path, model: Path, args: list[str], slots: int, threads: int, n_ctx: int, ngl: int):
    port = _free_port()
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(n_ctx * slots),
           "-np", str(slots), "-t", str(threads), "-ngl", str(ngl), "--no-warmup", *args]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "GGML_CPU_TILED_MM": "0"} if ngl == 0 else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server {' '.join(args)} exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("llama-server never answered /health")


def ask(url: str, text: str, max_tokens: int) -> dict:
    body = {"messages": [SYSTEM, {"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0,
            "cache_prompt": False}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
    return {"text": reply["choices"][0]["message"]["content"], **reply["timings"]}


def run_config(url: str, texts: list[str], slots: int, max_tokens: int) -> dict:
    ask(url, "Hello", 8)  # warm-up: graphs built
    start = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        replies = list(pool.map(lambda text: ask(url, text, max_tokens), texts))
    wall = time.perf_counter() - start
    drafted = sum(r.get("draft_n", 0) for r in replies)
    return {"replies": [r["text"] for r in replies], "wall_s": wall,
            "completion_tokens": sum(r["predicted_n"] for r in replies),
            "aggregate_tok_s": sum(r["predicted_n"] for r in replies) / wall,
            "request_tok_s_median": statistics.median(r["predicted_per_second"] for r in replies),
            "draft_n": drafted, "draft_accepted": sum(r.get("draft_n_accepted", 0) for r in replies),
            "acceptance": sum(r.get("draft_n_accepted", 0) for r in replies) / drafted if drafted else None}


def markdown(report: dict) -> str:
    slots = report["slots"]
    head = "| configuration | " + " | ".join(f"{s} slot{'s' if s > 1 else ''}: tok/s (per request), accepted"
                                             for s in slots) + " | identical to AR |"
    lines = [f"llama-server, {report['model']} on {report['device']} ({report['threads']} threads, "
             f"{report['n_prompts']} {report['prompts']} prompts x {report['max_tokens']} tokens, greedy)", "",
             head, "|---|" + "---:|" * len(slots) + "---|"]
    for name, per_slots in report["results"].items():
        cells = []
        for s in slots:
            r = per_slots[str(s)]
            ratio = r["aggregate_tok_s"] / report["results"]["ar"][str(s)]["aggregate_tok_s"]
            accepted = "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
            cells.append(f"{r['aggregate_tok_s']:.1f} ({r['request_tok_s_median']:.1f}), {ratio:.2f}x AR, {accepted}")
        same = all(per_slots[str(s)]["identical"] for s in slots)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", type=Path, help="llama-server built by `pyorthrus build --server DIR`")
    parser.add_argument("-m", "--model", type=Path, default=None, help="GGUF (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--prompts", default="mix", help="prompt set (pyorthrus.prompts): mix, chat, gsm8k, ...")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("-n", "--max-tokens", type=int, default=128)
    parser.add_argument("--ks", default="4,8,16", help="Orthrus block sizes (drafts per block: K - 1)")
    parser.add_argument("--slots", default="1,2,4")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    model = args.model or assets.smollm2_gguf()
    texts = [p["prompt"] for p in prompt_sets.load(args.prompts, args.n_prompts)]
    slots = [int(s) for s in args.slots.split(",")]
    device = (accelerators() or [cpu_name()])[0] if args.n_gpu_layers else cpu_name()
    report = {"model": model.name, "device": device, "machine": platform.machine(), "threads": args.threads,
              "prompts": args.prompts, "n_prompts": len(texts), "max_tokens": args.max_tokens, "slots": slots,
              "results": {}}
    for name, extra in configurations([int(k) for k in args.ks.split(",")]).items():
        for s in slots:
            process, url = start(args.server, model, extra, s, args.threads, 2048, args.n_gpu_layers)
            try:
                result = run_config(url, texts, s, args.max_tokens)
            finally:
                process.terminate()
                process.wait(timeout=60)
            ar = report["results"].get("ar", {}).get(str(s))
            result["identical"] = ar is None or result["replies"] == ar["replies"]
            report["results"].setdefault(name, {})[str(s)] = result
            print(f"{name} x{s}: {result['aggregate_tok_s']:.1f} tok/s aggregate, acceptance "
                  f"{result['acceptance']}, identical {result['identical']}", file=sys.stderr, flush=True)
    text = markdown(report)
    print(text)
    if args.out:
        atomic_write(args.out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
        atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
