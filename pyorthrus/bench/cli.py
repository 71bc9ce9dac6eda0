"""`pyorthrus bench`: AR vs Orthrus (per block size, and block_size="auto") vs a peer, measured side by side, plus
the device profile; `pyorthrus bench compare` puts several runs' results side by side.

Modes run interleaved prompt by prompt on the same model and context, so machine drift hits them alike. The device
profile times one K-token pass in each view; with the measured tokens per cycle it predicts the speedup
`tokens_per_cycle * t_AR(1) / (t_draft(K) + t_verify(K))`, which the measurement is then held against. Reports
(Markdown, plots, the cross-device comparison) are made by pyorthrus.bench.report.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .. import prompts as prompt_sets
from ..cli_options import (AR_LABEL, adapter_path, add_model_arguments, check_arguments, comma_list, mode_key,
                           mode_options, open_model, parse_modes)
from ..errors import PyorthrusError
from ..model import AUTO
from ..options import OptionError
from ..pass_costs import BENCH_SIZES, PassCosts, measure_pass_costs
from ..paths import check_writable
from ..stats import tokens_per_cycle
from .device import accelerators, cpu_name
from .shapes import SHAPES


def device_profile(llm, reps: int, fused: bool, largest_pass: int = 0) -> dict:
    """The pass-cost curve over BENCH_SIZES up to the trained K (included; twice that with fused cycles, whose verify
    pass decodes 2K tokens; largest_pass where a tree's verify pass is longer still), median of `reps` passes each."""
    largest = min(max((2 if fused else 1) * (llm.trained_block_size or max(BENCH_SIZES)), largest_pass),
                  llm.llm.n_batch)
    return measure_pass_costs(llm, {k for k in BENCH_SIZES if k <= largest} | {largest}, reps=reps).as_dict()


def _peer(model_path: Path, n_ctx: int, args: argparse.Namespace):
    """llama-cpp-python's prompt-lookup decoding on the same device settings as the Orthrus model."""
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from ..model import default_threads

    threads = args.threads or default_threads()
    return llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           n_gpu_layers=args.n_gpu_layers, flash_attn=args.flash_attn, seed=0, verbose=False,
                           draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))


def _kv_cache(llm) -> dict:
    """What sequence 0 holds in the KV cache right after a generation: cells and serialized bytes. Both views
    share this one cache, so an Orthrus run holds exactly what the AR run holds (the O(1) memory claim)."""
    import llama_cpp

    cells = llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(llm.ctx), 0) + 1
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    return {"kv_cells": cells, "kv_bytes": size, "kv_bytes_per_cell": size / cells if cells else 0.0}


# the modes bench runs when --block-sizes is not given, less those the model cannot run (K above its trained K;
# fused and tree modes on a model with recurrent layers)
DEFAULT_MODES = "4,8,16,4f,8f,16f,auto"


def run_modes(llm, prompts: list[dict], block_sizes: list[int | str], max_tokens: int, peer) -> list[dict]:
    """Per prompt: AR, Orthrus at each block size and the peer, the order rotated by one each prompt so that no mode
    always runs right after another (caches, clocks). One short warm-up generation per mode first (graphs are
    built; block_size="auto" measures its pass costs there, once per instance)."""
    ar = llm.ar_view()
    warmup = llm.tokenize("Hello")
    ar.generate(warmup, max_tokens=8)
    for mode in block_sizes:
        llm.generate(warmup, max_tokens=8, **mode_options(mode))
    modes = [AR_LABEL, *block_sizes] + (["peer"] if peer is not None else [])
    rows = []
    for i, prompt in enumerate(tqdm(prompts, desc="bench", unit="prompt", file=sys.stderr)):
        tokens = llm.tokenize(llm.chat_prompt([{"role": "user", "content": prompt["prompt"]}]))
        done = {}
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            if mode == "peer":
                start = time.perf_counter()
                reply = peer.create_completion(llm.detokenize(tokens), max_tokens=max_tokens, temperature=0.0)
                done[mode] = (reply["usage"]["completion_tokens"], time.perf_counter() - start)
            else:
                out = ar.generate(tokens, max_tokens=max_tokens) if mode == AR_LABEL else \
                    llm.generate(tokens, max_tokens=max_tokens, **mode_options(mode))
                done[mode] = (out, _kv_cache(llm))
        base = done[AR_LABEL][0]
        row = {"prompt": prompt["prompt"][:80], AR_LABEL: {**_mode_row(base), **done[AR_LABEL][1]}}
        for k in block_sizes:
            out, kv = done[k]
            row[mode_key(k)] = {**_mode_row(out), **kv, "identical": out.tokens == base.tokens,
                                "speedup": out.stats.tokens_per_second / base.stats.tokens_per_second}
        if peer is not None:
            n, elapsed = done["peer"]
            e2e_ar = base.stats.t_prefill_s + base.stats.t_total_s
            row["peer_prompt_lookup"] = {"tokens": n, "tok_s_end_to_end": n / elapsed,
                                         "speedup_end_to_end": (n / elapsed) / (len(base.tokens) / e2e_ar)}
        rows.append(row)
    return rows


def _mode_row(out) -> dict:
    s = out.stats
    d = s.as_dict()
    return {"tokens": len(out.tokens), "tok_s": s.tokens_per_second, "tokens_per_cycle": s.tokens_per_cycle,
            "cycles": s.n_cycles, "ar_steps": s.n_ar_steps, "block_size_histogram": d["block_size_histogram"],
            "passes": s.n_passes, "carried": s.n_carried, "tree_nodes": s.n_tree_nodes, "offchain": s.n_offchain,
            "redecoded": s.n_redecoded,
            "t_total_s": s.t_total_s, "t_prefill_s": s.t_prefill_s, "t_first_token_s": s.t_first_token_s,
            "t_draft_s": s.t_draft_s, "t_verify_s": s.t_verify_s, "t_ar_s": s.t_ar_s,
            "accepted_histogram": d["accepted_histogram"],
            "t_loop_overhead_s": s.t_total_s - s.t_draft_s - s.t_verify_s - s.t_ar_s}


def _merged(histograms: list[dict]) -> dict[int, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            total[int(key)] = total.get(int(key), 0) + count
    return dict(sorted(total.items()))


def summarize(rows: list[dict], block_sizes: list[int | str], profile: dict, fused: bool = False) -> dict:
    costs = PassCosts.from_dict(profile)
    t1 = costs.t_step_s
    ar = [r[AR_LABEL] for r in rows]
    summary = {"ar_tok_s_median": statistics.median(m["tok_s"] for m in ar),
               "ar_first_token_s_median": statistics.median(m["t_first_token_s"] for m in ar),
               "ar_kv_bytes_per_cell": statistics.median(m["kv_bytes_per_cell"] for m in ar)}
    for k in block_sizes:
        mode = [r[mode_key(k)] for r in rows]
        tokens = sum(m["tokens"] for m in mode)
        ar_steps = sum(m["ar_steps"] for m in mode)
        cycles = sum(m["cycles"] for m in mode)
        measured = [m["speedup"] for m in mode]
        histogram = _merged([m["block_size_histogram"] for m in mode])
        entry = {"tok_s_median": statistics.median(m["tok_s"] for m in mode),
                 "speedup_median": statistics.median(measured), "speedup_min": min(measured),
                 "speedup_max": max(measured), "tokens_per_cycle": tokens_per_cycle(tokens, ar_steps, cycles, None),
                 "first_token_s_median": statistics.median(m["t_first_token_s"] for m in mode),
                 "kv_bytes_per_cell": statistics.median(m["kv_bytes_per_cell"] for m in mode),
                 "identical_rate": sum(m["identical"] for m in mode) / len(mode),
                 "loop_overhead_share": sum(m["t_loop_overhead_s"] for m in mode) / sum(m["t_total_s"] for m in mode),
                 "accepted_histogram": _merged([m["accepted_histogram"] for m in mode]),
                 "ar_step_share": ar_steps / tokens if tokens else 0.0, "block_size_histogram": histogram}
        # the time the profile predicts for what the mode did: its cycles at their K, its AR steps at t(1); a fused
        # cycle is a 2K-token verify pass plus a draft pass unless its draft was carried over
        if fused or mode_options(k).get("fused"):
            carried = sum(m["carried"] for m in mode)
            mean_draft = sum(n * costs.draft(size) for size, n in histogram.items()) / cycles if cycles else 0.0
            predicted_s = sum(n * (costs.verify(2 * size) + costs.draft(size)) for size, n in histogram.items()) \
                - carried * mean_draft + ar_steps * t1
            entry["carried_share"] = carried / cycles if cycles else 0.0
            entry["passes_per_cycle"] = (sum(m["passes"] for m in mode) - ar_steps) / cycles if cycles else None
        elif mode_options(k).get("tree"):
            # a tree cycle: the K-token draft pass and a verify pass of every node plus the root; strict builds
            # add a pass re-laying an accepted off-chain path (the share of such cycles, at the tail's length)
            nodes = mode_options(k)["tree"]
            offchain = sum(m["offchain"] for m in mode)
            predicted_s = sum(n * (costs.draft(size) + costs.verify(nodes + 1)) for size, n in histogram.items()) \
                + offchain * t1 + ar_steps * t1
            entry["offchain_share"] = offchain / cycles if cycles else 0.0
            entry["tree_nodes"] = nodes
        else:
            predicted_s = sum(n * costs.cycle(size) for size, n in histogram.items()) + ar_steps * t1
        if predicted_s:
            entry["predicted_speedup"] = tokens * t1 / predicted_s
            entry["measured_over_predicted"] = entry["speedup_median"] / entry["predicted_speedup"]
        summary[mode_key(k)] = entry
    peers = [r["peer_prompt_lookup"]["speedup_end_to_end"] for r in rows if "peer_prompt_lookup" in r]
    if peers:
        summary["peer_prompt_lookup_speedup_median"] = statistics.median(peers)
    return summary


def device_info(llm, n_gpu_layers: int) -> dict:
    from ..build import installed_build_info

    build = installed_build_info()
    return {"cpu": cpu_name(), "accelerators": accelerators(), "n_gpu_layers": n_gpu_layers, "machine": platform.machine(),
            "system": platform.system(), "threads": llm.llm.n_threads,
            "backend": (build["build"] or {}).get("backend"), "flavour": (build["build"] or {}).get("flavour"),
            "cmake_args": (build["build"] or {}).get("cmake_args"), "llama_cpp_python": build["llama_cpp_python"],
            "system_info": build["system_info"]}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Benchmark AR vs Orthrus (each block size, and 'auto') vs llama-cpp-python's prompt-lookup "
                          "decoding on one machine, interleaved prompt by prompt, plus the device pass-cost profile "
                          "and the speedup it predicts. Writes JSON, Markdown and (with matplotlib) PNG plots. "
                          "`pyorthrus bench compare A.json B.json ...` tabulates runs from several machines.")
    parser.add_argument("--prompts", default="gsm8k", help="mix, chat, gsm8k, humaneval or a JSONL file")
    parser.add_argument("--n-prompts", type=int, default=10, help="number of prompts")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--block-sizes", default=None,
                        help="comma-separated modes to run: integers K, 'Kf' (K with fused cycles: each verify "
                             "pass also drafts the next block), 'KtN' (K verifying a tree of N draft nodes per "
                             f"pass, e.g. 16t32) and/or 'auto' (default: those of {DEFAULT_MODES} the model can run)")
    parser.add_argument("--no-peer", action="store_true", help="skip the prompt-lookup peer")
    parser.add_argument("--profile-only", action="store_true", help="only the device pass-cost profile")
    parser.add_argument("--profile-reps", type=int, default=7, help="timed passes per K in the device profile")
    parser.add_argument("--out", type=Path, default=None,
                        help="write OUT.json, OUT.md and the plots OUT_*.png")
    shape = parser.add_argument_group(
        "model shapes (random weights: timing only)",
        "--shape times random-weight merged GGUFs of published shapes instead of running prompts: pass costs at "
        "each prefix, whole cycles, break-even acceptance and projections. Files are made once (F16 written with "
        "gguf-py, quantized with llama_model_quantize) and cached.")
    shape.add_argument("--shape", type=comma_list(), default=None, metavar="NAMES",
                       help="comma-separated shapes: " + ", ".join(SHAPES))
    shape.add_argument("--weights", type=comma_list(str.lower), default="q4_k_m,q8_0",
                       help="weight types for --shape: f16, q8_0, q4_k_m")
    shape.add_argument("--prefixes", type=comma_list(int), default="128,4096",
                       help="cached prefix lengths for --shape")
    shape.add_argument("--shape-cache", type=Path, default=None,
                       help="where shape GGUFs are kept (default: the pyorthrus cache's shapes/)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    add_model_arguments(parser)
    sub = parser.add_subparsers(dest="bench_command", metavar="compare", title="subcommand")
    compare = sub.add_parser("compare", help="tabulate bench JSON reports from several machines",
                             description="Render a cross-device Markdown table (device, backend, AR tok/s, best K, "
                                         "speedup, tokens/cycle, predicted, auto) and a speedup-vs-K plot from "
                                         "`pyorthrus bench --out` JSON reports.")
    compare.add_argument("reports", nargs="+", type=Path, help="bench JSON reports")
    compare.add_argument("--out", dest="compare_out", metavar="OUT", type=Path, default=None,
                         help="also write OUT.md and OUT.png")


@contextlib.contextmanager
def block_sizes_named():
    """bench's block sizes come from --block-sizes (the model's -k is set from them): its errors name that flag."""
    try:
        yield
    except OptionError as exc:
        if exc.name not in ("block_size", "tree"):
            raise
        raise PyorthrusError(f"--block-sizes {exc.value}: {exc.requirement}") from None


def run(args: argparse.Namespace) -> int:
    from . import report as reports

    if args.bench_command == "compare":
        if args.compare_out:
            check_writable(args.compare_out)
        return reports.run_compare(args.reports, args.compare_out)
    # refuse bad flags and an output that cannot be written before minutes of measuring, not after
    check_arguments(args)
    for flag, value in (("--profile-reps", args.profile_reps), ("--n-prompts", args.n_prompts)):
        if value < 1:
            raise PyorthrusError(f"{flag} {value}: must be >= 1")
    if args.block_size is not None:  # add_model_arguments' -k: bench sets it per mode itself
        raise PyorthrusError(f"-k {args.block_size}: bench runs the block sizes of --block-sizes, give them there")
    if args.tree is not None:
        raise PyorthrusError(f"--tree {args.tree}: bench runs the trees of --block-sizes, give them there (e.g. 16t32)")
    if args.out:
        check_writable(args.out)
    if args.shape:
        from . import shape_runs

        return shape_runs.run(args)
    block_sizes = parse_modes(args.block_sizes or DEFAULT_MODES, "--block-sizes", allow_auto=True)
    adapter = adapter_path(args)
    numeric = [mode_options(k)["block_size"] for k in block_sizes if k != AUTO]
    args.block_size = (max(numeric) if numeric else AUTO) if args.block_sizes else None  # None: the trained K
    with block_sizes_named(), open_model(args) as llm:
        runnable = []
        for mode in block_sizes:  # refuse a bad K before minutes of profiling (the defaults: leave it out)
            options = mode_options(mode)
            try:
                llm.check_block_size(options["block_size"], options.get("fused"))
                llm.check_tree(options.get("tree", 0), options["block_size"], options.get("fused"))
                runnable.append(mode)
            except PyorthrusError as exc:
                if args.block_sizes:
                    raise
                print(f"bench: leaving out {mode} ({exc})", file=sys.stderr)
        block_sizes = runnable
        # fused passes decode 2K tokens: measured when a fused mode runs, or auto, which may fuse
        any_fused = any(mode_options(m).get("fused") for m in block_sizes) or \
            (AUTO in block_sizes and llm.fused is not False)
        largest_tree = max((mode_options(m).get("tree", 0) + 1 for m in block_sizes), default=0)
        profile = device_profile(llm, args.profile_reps, any_fused, largest_tree)
        report = {"model": str(llm.llm.model_path), "adapter": str(adapter) if adapter else None,
                  "device": device_info(llm, args.n_gpu_layers), "strict": llm.strict, "profile": profile,
                  "prompts": args.prompts, "n_prompts": args.n_prompts, "max_tokens": args.max_tokens,
                  "block_sizes": block_sizes}
        if not args.profile_only:
            peer = None if args.no_peer else _peer(Path(llm.llm.model_path), llm.llm.n_ctx(), args)
            rows = run_modes(llm, prompt_sets.load(args.prompts, args.n_prompts), block_sizes, args.max_tokens,
                             peer)
            report["rows"] = rows
            report["summary"] = summarize(rows, block_sizes, profile, bool(llm.fused))
            report["fused"] = llm.fused
            if llm.auto_controller is not None:
                report["auto_state"] = llm.auto_controller.as_dict()
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        if "summary" in report:
            args.out.with_suffix(".md").write_text(reports.markdown(report, plots=reports.plot(report, args.out)))
    if args.json:
        print(json.dumps(report, indent=2))
    elif "summary" in report:
        print(reports.markdown(report))
    else:
        print(json.dumps(profile, indent=2))
    return 0
