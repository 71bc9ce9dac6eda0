"""`pyorthrus bench`: AR vs Orthrus (per block size) vs a peer, measured side by side, plus the device profile.

Modes run interleaved prompt by prompt on the same model and context, so machine drift hits them alike. The device
profile times one K-token pass in each view; with the measured tokens per cycle it predicts the speedup
`tokens_per_cycle * t_AR(1) / (t_draft(K) + t_verify(K))`, which the measurement is then held against.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from . import prompts as prompt_sets
from .generate import add_model_arguments, open_model

PROFILE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32)


def _timed_pass(llm, tokens: list[int], start_pos: int, diffusion: bool) -> float:
    """Seconds for one decode of `tokens` at start_pos.. with logits for every row; the cells are removed after."""
    import llama_cpp

    lib, ctx = llm._lib, llm._ctx
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start_pos + i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        lib.llama_orthrus_set_diffusion(ctx, diffusion)
        start = time.perf_counter()
        status = llama_cpp.llama_decode(ctx, batch)
        elapsed = time.perf_counter() - start
    finally:
        lib.llama_orthrus_set_diffusion(ctx, False)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, start_pos, -1)
        llama_cpp.llama_batch_free(batch)
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status} for a {len(tokens)}-token pass")
    return elapsed


def device_profile(llm, sizes=PROFILE_SIZES, prefix_len: int = 128, reps: int = 7) -> dict:
    """Median seconds of one K-token pass after a prefix_len-token cache, in the AR (verify) and draft views."""
    prompt = llm.tokenize(" ".join(prompt_sets.CHAT_PROMPTS))[:prefix_len + 1]
    llm._prefill(prompt)
    position = len(prompt) - 1
    sizes = [k for k in sizes if k <= min(llm.trained_block_size or max(sizes), llm.llm.n_batch)] or [1]
    rows = {}
    for k in sizes:
        block = prompt[:k]
        _timed_pass(llm, block, position, False)  # warm-up (graph build)
        verify = statistics.median(_timed_pass(llm, block, position, False) for _ in range(reps))
        draft = statistics.median(_timed_pass(llm, block, position, True) for _ in range(reps)) if k > 1 else None
        rows[k] = {"t_verify_s": verify, "t_draft_s": draft}
    t1 = rows[min(rows)]["t_verify_s"]
    for k, row in rows.items():
        row["pass_over_step"] = row["t_verify_s"] / t1
        # even if every draft were accepted: K tokens per two passes
        row["ceiling_speedup"] = k * t1 / (row["t_verify_s"] + row["t_draft_s"]) if row["t_draft_s"] else None
    return {"prefix_tokens": position, "t_step_s": t1, "passes": rows}


def _peer(model_path: Path, n_ctx: int, threads: int | None):
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    return llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=threads, seed=0, verbose=False,
                           draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))


def run_modes(llm, prompts: list[dict], block_sizes: list[int], max_tokens: int, peer) -> list[dict]:
    """Per prompt, after one warm-up generation: AR, Orthrus at each K, then the peer."""
    ar = llm.ar_view()
    rows = []
    ar.generate(llm.tokenize("Hello"), max_tokens=8)
    for prompt in tqdm(prompts, desc="bench", unit="prompt", file=sys.stderr):
        tokens = llm.tokenize(llm.chat_prompt([{"role": "user", "content": prompt["prompt"]}]))
        base = ar.generate(tokens, max_tokens=max_tokens)
        row = {"prompt": prompt["prompt"][:80], "ar": _mode_row(base)}
        for k in block_sizes:
            llm.block_size = k
            out = llm.generate(tokens, max_tokens=max_tokens)
            row[f"orthrus_k{k}"] = {**_mode_row(out), "identical": out.tokens == base.tokens,
                                    "speedup": out.stats.tokens_per_second / base.stats.tokens_per_second}
        if peer is not None:
            start = time.perf_counter()
            reply = peer.create_completion(llm.detokenize(tokens), max_tokens=max_tokens, temperature=0.0)
            elapsed = time.perf_counter() - start
            n = reply["usage"]["completion_tokens"]
            e2e_ar = base.stats.t_prefill_s + base.stats.t_total_s
            row["peer_prompt_lookup"] = {"tokens": n, "tok_s_end_to_end": n / elapsed,
                                         "speedup_end_to_end": (n / elapsed) / (len(base.tokens) / e2e_ar)}
        rows.append(row)
    return rows


def _mode_row(out) -> dict:
    s = out.stats
    return {"tokens": len(out.tokens), "tok_s": s.tokens_per_second, "tokens_per_cycle": s.tokens_per_cycle,
            "cycles": s.n_cycles, "t_total_s": s.t_total_s, "t_prefill_s": s.t_prefill_s, "t_draft_s": s.t_draft_s,
            "t_verify_s": s.t_verify_s, "accepted_histogram": s.as_dict()["accepted_histogram"],
            "t_loop_overhead_s": s.t_total_s - s.t_draft_s - s.t_verify_s}


def summarize(rows: list[dict], block_sizes: list[int], profile: dict) -> dict:
    summary = {"ar_tok_s_median": statistics.median(r["ar"]["tok_s"] for r in rows)}
    t1 = profile["passes"][1]["t_verify_s"] if 1 in profile["passes"] else profile["t_step_s"]
    for k in block_sizes:
        mode = [r[f"orthrus_k{k}"] for r in rows]
        tpc = sum(m["tokens"] for m in mode) / sum(m["cycles"] for m in mode)
        measured = [m["speedup"] for m in mode]
        entry = {"tok_s_median": statistics.median(m["tok_s"] for m in mode),
                 "speedup_median": statistics.median(measured), "speedup_min": min(measured),
                 "speedup_max": max(measured), "tokens_per_cycle": tpc,
                 "identical_rate": sum(m["identical"] for m in mode) / len(mode),
                 "loop_overhead_share": sum(m["t_loop_overhead_s"] for m in mode) / sum(m["t_total_s"] for m in mode)}
        passes = profile["passes"].get(k)
        if passes and passes["t_draft_s"]:
            entry["predicted_speedup"] = tpc * t1 / (passes["t_draft_s"] + passes["t_verify_s"])
            entry["measured_over_predicted"] = entry["speedup_median"] / entry["predicted_speedup"]
        summary[f"orthrus_k{k}"] = entry
    peers = [r["peer_prompt_lookup"]["speedup_end_to_end"] for r in rows if "peer_prompt_lookup" in r]
    if peers:
        summary["peer_prompt_lookup_speedup_median"] = statistics.median(peers)
    return summary


def device_info(llm) -> dict:
    from .build import installed_build_info

    build = installed_build_info()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"cpu": cpu, "machine": platform.machine(), "system": platform.system(), "threads": llm.llm.n_threads,
            "backend": (build["build"] or {}).get("backend"), "flavour": (build["build"] or {}).get("flavour"),
            "cmake_args": (build["build"] or {}).get("cmake_args"), "llama_cpp_python": build["llama_cpp_python"],
            "system_info": build["system_info"]}


def markdown(report: dict) -> str:
    s, dev = report["summary"], report["device"]
    lines = [f"# pyorthrus bench: {Path(report['model']).name} + {Path(report['adapter'] or '-').name}", "",
             f"{dev['cpu']} ({dev['machine']}), {dev['threads']} threads, backend {dev['backend']} "
             f"({dev['flavour']}); prompts: {report['prompts']} x {report['n_prompts']}, {report['max_tokens']} "
             f"tokens, greedy.", "",
             "| mode | tok/s (median) | speedup vs AR (median, min-max) | tokens/cycle | predicted | "
             "measured/predicted | identical to AR |", "|---|---|---|---|---|---|---|",
             f"| AR | {s['ar_tok_s_median']:.1f} | 1.00 | 1.00 | | | |"]
    for key, e in s.items():
        if key.startswith("orthrus_k"):
            lines.append(f"| Orthrus K={key[9:]} | {e['tok_s_median']:.1f} | {e['speedup_median']:.2f} "
                         f"({e['speedup_min']:.2f}-{e['speedup_max']:.2f}) | {e['tokens_per_cycle']:.2f} | "
                         f"{e.get('predicted_speedup', float('nan')):.2f} | "
                         f"{e.get('measured_over_predicted', float('nan')):.2f} | {e['identical_rate']:.0%} |")
    if "peer_prompt_lookup_speedup_median" in s:
        lines.append(f"| prompt lookup (llama-cpp-python, end to end) | | "
                     f"{s['peer_prompt_lookup_speedup_median']:.2f} | | | | |")
    lines += ["", "Device profile (one pass, median):", "", "| K | verify pass ms | draft pass ms | pass / 1-token "
              "step | ceiling speedup (all drafts accepted) |", "|---|---|---|---|---|"]
    for k, p in report["profile"]["passes"].items():
        draft = f"{p['t_draft_s'] * 1e3:.1f}" if p["t_draft_s"] else "-"
        ceiling = f"{p['ceiling_speedup']:.2f}" if p["ceiling_speedup"] else "-"
        lines.append(f"| {k} | {p['t_verify_s'] * 1e3:.1f} | {draft} | {p['pass_over_step']:.2f} | {ceiling} |")
    return "\n".join(lines) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Benchmark AR vs Orthrus (each block size) vs llama-cpp-python's prompt-lookup decoding "
                          "on one machine, interleaved prompt by prompt, plus the device pass-cost profile and the "
                          "speedup it predicts. Writes JSON and Markdown.")
    parser.add_argument("--prompts", default="gsm8k", help="mix, chat, gsm8k, humaneval or a JSONL file")
    parser.add_argument("--n-prompts", type=int, default=10, help="number of prompts")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--block-sizes", default="4,8,16", help="comma-separated K values to run")
    parser.add_argument("--no-peer", action="store_true", help="skip the prompt-lookup peer")
    parser.add_argument("--profile-only", action="store_true", help="only the device pass-cost profile")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from . import assets

    block_sizes = [int(k) for k in args.block_sizes.split(",") if k.strip()]
    if args.adapter is None and args.model is None:
        args.adapter = assets.default_adapter()
    args.block_size = max(block_sizes)
    with open_model(args) as llm:
        profile = device_profile(llm)
        report = {"model": str(llm.llm.model_path), "adapter": str(args.adapter) if args.adapter else None,
                  "device": device_info(llm), "profile": profile, "prompts": args.prompts,
                  "n_prompts": args.n_prompts, "max_tokens": args.max_tokens}
        if not args.profile_only:
            peer = None if args.no_peer else _peer(Path(llm.llm.model_path), llm.llm.n_ctx(), args.threads)
            rows = run_modes(llm, prompt_sets.load(args.prompts, args.n_prompts), block_sizes, args.max_tokens,
                             peer)
            report["rows"] = rows
            report["summary"] = summarize(rows, block_sizes, profile)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        if "summary" in report:
            args.out.with_suffix(".md").write_text(markdown(report))
    if args.json:
        print(json.dumps(report, indent=2))
    elif "summary" in report:
        print(markdown(report))
    else:
        print(json.dumps(profile, indent=2))
    return 0
