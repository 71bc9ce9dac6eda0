"""llama-server side by side: plain AR, its n-gram speculation and `--spec-type orthrus` (patch 0020) at several K,
at 1, 2 and 4 slots, on one machine in one run (the same binary, the same prompts), against the real peer: plain
llama.cpp's llama-server (unpatched, its default flags) and, in process, pyorthrus's own AR and `-k auto`.

    pyorthrus build --server bin --plain-server bin   # once: bin/llama-server (patched), bin/llama-server-plain
    python bench/llama_server.py bin/llama-server --peer bin/llama-server-plain --pyorthrus \
        --out bench/results/llama_server_cpu

Per configuration and slot count: the prompts are sent by as many concurrent clients as there are slots; reported
are the aggregate throughput (completion tokens of all requests / wall time), the median per-request decode speed
(the server's own `predicted_per_second`; for pyorthrus, tokens / decode time), the draft acceptance
(`draft_n_accepted / draft_n`), the ratio to the peer's AR (to the patched server's AR without --peer), and, greedy,
whether every reply equals the patched server's AR. --temperature T samples instead (seed per prompt), where the
server accepts Orthrus drafts by speculative sampling. The device is named in the report. SmolLM2-135M Q4_1 + the
shipped adapter by default.
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
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from pyorthrus import assets, prompts as prompt_sets
from pyorthrus.bench.device import accelerators, cpu_name
from pyorthrus.cli_options import comma_list
from pyorthrus.files import atomic_write
from pyorthrus.gguf_meta import weight_types
from pyorthrus.strict import repack_is_strict

SYSTEM = {"role": "system", "content": assets.EMBEDDED_SYSTEM_PROMPT}
PEER_AR = "llama.cpp ar (unpatched)"


@dataclass
class Config:
    binary: Path
    args: list[str]
    strict: bool  # the patched build's batch-invariant CPU settings (tiled matmul off; repacking only where
    #               every repacked type is batch-invariant, as pyorthrus loads models)


def configurations(server: Path, peer: Path | None, ks: list[int]) -> dict[str, Config]:
    """Name -> how to run each server configuration: the peer's AR first, then the patched server's."""
    adapter = ["--orthrus-adapter", str(assets.default_adapter())]
    configs = {PEER_AR: Config(peer, [], False)} if peer else {}
    configs.update({"ar": Config(server, [], True),
                    "ngram-simple": Config(server, ["--spec-type", "ngram-simple"], True),
                    "ngram-mod": Config(server, ["--spec-type", "ngram-mod"], True)})
    for k in ks:
        configs[f"orthrus-k{k}"] = Config(server, ["--spec-type", "orthrus", *adapter, "--spec-draft-n-max",
                                                   str(k - 1)], True)
    return configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: Config, model: Path, slots: int, threads: int, n_ctx: int, ngl: int, log):
    """Start a llama-server on loopback, logging to the file `log` (a pipe nobody reads would fill and block it)."""
    port = _free_port()
    cmd = [str(config.binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-c", str(n_ctx * slots), "-np", str(slots), "-t", str(threads), "-ngl", str(ngl), "--no-warmup",
           *(["--no-repack"] if config.strict and ngl == 0 and not repack_is_strict(weight_types(model)) else []),
           *config.args]
    strict_env = {**os.environ, "GGML_CPU_TILED_MM": "0"} if config.strict and ngl == 0 else None
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=strict_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{config.binary} {' '.join(config.args)} exited: {log.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{config.binary} never answered /health")


def ask(url: str, text: str, max_tokens: int, temperature: float, seed: int) -> dict:
    body = {"messages": [SYSTEM, {"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, "cache_prompt": False}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
    return {"text": reply["choices"][0]["message"]["content"], **reply["timings"]}


def summarize(replies: list[dict], wall: float) -> dict:
    drafted = sum(r.get("draft_n", 0) for r in replies)
    accepted = sum(r.get("draft_n_accepted", 0) for r in replies)
    return {"replies": [r["text"] for r in replies], "wall_s": wall,
            "completion_tokens": sum(r["predicted_n"] for r in replies),
            "aggregate_tok_s": sum(r["predicted_n"] for r in replies) / wall,
            "request_tok_s_median": statistics.median(r["predicted_per_second"] for r in replies),
            "draft_n": drafted, "draft_accepted": accepted, "acceptance": accepted / drafted if drafted else None}


class ServerRunner:
    """One configuration's server (with `slots` slots) on loopback, for as long as the benchmark runs."""

    def __init__(self, config: Config, model: Path, slots: int, args: argparse.Namespace):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process, self.url = start(config, model, slots, args.threads, 2048, args.n_gpu_layers, self.log)
        ask(self.url, "Hello", 8, 0.0, 0)  # warm-up: graphs built

    def run(self, jobs: list[tuple[int, str]], max_tokens: int, temperature: float) -> list[dict]:
        with ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(lambda job: ask(self.url, job[1], max_tokens, temperature, job[0]), jobs))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


class PyorthrusRunner:
    """pyorthrus in this process, one request at a time: the same chat prompts through Orthrus.generate; mode "ar"
    or a block size ("auto")."""

    def __init__(self, model: Path, mode: str, args: argparse.Namespace):
        from pyorthrus import Orthrus

        self.llm = Orthrus(model, assets.default_adapter(), mode="ar" if mode == "ar" else "orthrus",
                           block_size=None if mode == "ar" else mode, n_threads=args.threads,
                           n_gpu_layers=args.n_gpu_layers, system_prompt=assets.EMBEDDED_SYSTEM_PROMPT)
        self.run([(0, "Hello")], 8, 0.0)  # warm-up (and, for auto, the pass-cost profile)

    def run(self, jobs: list[tuple[int, str]], max_tokens: int, temperature: float) -> list[dict]:
        replies = []
        for seed, text in jobs:
            result = self.llm.generate(self.llm.chat_prompt([{"role": "user", "content": text}]),
                                       max_tokens=max_tokens, temperature=temperature, seed=seed)
            n = result.stats.n_generated
            replies.append({"text": result.text, "predicted_n": n, "predicted_per_second": n / result.stats.t_total_s})
        return replies

    def close(self) -> None:
        self.llm.close()


def run_side_by_side(runners: dict, texts: list[str], slots: int, max_tokens: int, temperature: float) -> dict:
    """Every runner decodes the same group of `slots` prompts (sent at once) in turn, the order rotated by one each
    group, so that a slower or busier moment of the machine falls on every configuration alike."""
    names = list(runners)
    replies = {name: [] for name in names}
    wall = dict.fromkeys(names, 0.0)
    groups = [list(enumerate(texts))[i:i + slots] for i in range(0, len(texts), slots)]
    for g, jobs in enumerate(groups):
        for name in names[g % len(names):] + names[:g % len(names)]:
            start_time = time.perf_counter()
            replies[name] += runners[name].run(jobs, max_tokens, temperature)
            wall[name] += time.perf_counter() - start_time
    return {name: summarize(replies[name], wall[name]) for name in names}


def markdown(report: dict) -> str:
    slots = report["slots"]
    base = PEER_AR if PEER_AR in report["results"] else "ar"
    label = "plain llama.cpp" if base == PEER_AR else "AR"
    head = "| configuration | " + " | ".join(f"{s} slot{'s' if s > 1 else ''}: tok/s (per request), accepted"
                                             for s in slots) + " | identical to AR |"
    sampling = "greedy" if not report["temperature"] else f"temperature {report['temperature']}"
    lines = [f"llama-server, {report['model']} on {report['device']} ({report['threads']} threads, "
             f"{report['n_prompts']} {report['prompts']} prompts x {report['max_tokens']} tokens, {sampling})", "",
             head, "|---|" + "---:|" * len(slots) + "---|"]
    for name, per_slots in report["results"].items():
        cells = []
        for s in slots:
            r = per_slots.get(str(s))
            if r is None:
                cells.append("")
                continue
            ratio = r["aggregate_tok_s"] / report["results"][base][str(s)]["aggregate_tok_s"]
            accepted = "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
            cells.append(f"{r['aggregate_tok_s']:.1f} ({r['request_tok_s_median']:.1f}), {ratio:.2f}x {label}, "
                         f"{accepted}")
        same = {r["identical"] for r in per_slots.values()}
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if None in same else 'yes' if all(same) else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", type=Path, help="llama-server built by `pyorthrus build --server DIR`")
    parser.add_argument("--peer", type=Path, default=None,
                        help="plain llama.cpp's llama-server (`pyorthrus build --plain-server DIR`): its AR runs side by side "
                             "with the rest and every ratio is to it")
    parser.add_argument("--pyorthrus", action="store_true",
                        help="also pyorthrus's own AR and -k auto in this process (1 slot)")
    parser.add_argument("-m", "--model", type=Path, default=None, help="GGUF (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--prompts", default="mix", help="prompt set (pyorthrus.prompts): mix, chat, gsm8k, ...")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("-n", "--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampled, seed = prompt index")
    parser.add_argument("--ks", type=comma_list(int), default="4,8,16",
                        help="Orthrus block sizes (drafts per block: K - 1)")
    parser.add_argument("--slots", type=comma_list(int), default="1,2,4")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    model = args.model or assets.smollm2_gguf()
    texts = [p["prompt"] for p in prompt_sets.load(args.prompts, args.n_prompts)]
    slots = args.slots
    device = (accelerators() or [cpu_name()])[0] if args.n_gpu_layers else cpu_name()
    report = {"model": model.name, "device": device, "machine": platform.machine(), "threads": args.threads,
              "prompts": args.prompts, "n_prompts": len(texts), "max_tokens": args.max_tokens,
              "temperature": args.temperature, "slots": slots, "results": {}}

    def record(name: str, s: int, result: dict, ar: dict) -> None:
        result["identical"] = result["replies"] == ar["replies"] if not args.temperature else None
        report["results"].setdefault(name, {})[str(s)] = result
        print(f"{name} x{s}: {result['aggregate_tok_s']:.1f} tok/s aggregate, acceptance "
              f"{result['acceptance']}, identical {result['identical']}", file=sys.stderr, flush=True)

    configs = configurations(args.server, args.peer, args.ks)
    for s in slots:
        runners = {}
        try:
            for name, config in configs.items():
                runners[name] = ServerRunner(config, model, s, args)
            if args.pyorthrus and s == 1:
                for mode in ("ar", "auto"):
                    runners[f"pyorthrus {mode}"] = PyorthrusRunner(model, mode, args)
            results = run_side_by_side(runners, texts, s, args.max_tokens, args.temperature)
        finally:
            for runner in runners.values():
                runner.close()
        for name, result in results.items():
            record(name, s, result, results["ar"])
    text = markdown(report)
    print(text)
    if args.out:
        atomic_write(args.out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
        atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
