"""`pyorthrus bench --shape NAME`: pass costs of real model shapes (random weights: timing only) and where Orthrus
pays on this machine.

For each shape, weight type and cache prefix: the one-token step t(1) against the weight-bandwidth floor (bytes an
AR step reads / measured memory bandwidth), one K-token pass in each view, a whole `llama_orthrus_cycle` per K (the
in-loop cost, held against draft + verify), and from them the break-even acceptance (tokens per cycle at which
Orthrus equals AR: t_cycle(K) / t(1); above K it can never pay at that K) and projected speedups at acceptances
that trained adapters reach.
"""
from __future__ import annotations

import concurrent.futures
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import PyorthrusError
from ..gguf_meta import open_reader
from ..pass_costs import measure_cycle_costs, measure_pass_costs
from . import shapes
from .device import accelerators, cpu_name

SIZES = (1, 2, 4, 8, 16, 32)
PASS_COLUMNS = (4, 16, 32)  # verify pass / step shown in the Markdown table (the JSON has every K and both views)
# Tokens per cycle to project at. Ours: the shipped SmolLM2 adapter on the 2-core CPU (bench/results/
# cpu_smollm2_q4_1.md). The paper's acceptance lengths on Qwen3-8B at K=32, carried to smaller K by a constant
# per-position acceptance rate fitted to them (our adapter's curve saturates near 3 tokens, so scaling the paper's
# numbers by its shape would claim more than K tokens per cycle at K=4).
SHIPPED_TOKENS_PER_CYCLE = {4: 2.70, 8: 2.93, 16: 2.94}
PAPER_ACCEPTANCE_K32 = {"paper GSM8K": 9.6, "paper MBPP": 6.9}


def geometric_rate(tokens_per_cycle: float, k: int) -> float:
    """alpha with (1 - alpha^k) / (1 - alpha) = tokens_per_cycle: each further draft accepted with probability alpha."""
    lo, hi = 0.0, 1.0 - 1e-12
    for _ in range(100):
        mid = (lo + hi) / 2
        if (1 - mid ** k) / (1 - mid) < tokens_per_cycle:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def acceptance_table(sizes) -> dict[str, dict[int, float]]:
    table = {"shipped adapter": {k: v for k, v in SHIPPED_TOKENS_PER_CYCLE.items() if k in sizes}}
    for label, at_32 in PAPER_ACCEPTANCE_K32.items():
        alpha = geometric_rate(at_32, 32)
        table[label] = {k: (1 - alpha ** k) / (1 - alpha) for k in sizes if k > 1}
    return table


def memory_bandwidth(threads: int, nbytes: int = 1 << 30) -> float:
    """Bytes per second that `threads` threads read from RAM (numpy sums over a 1 GiB array, best of 3)."""
    data = np.ones(nbytes // 8, dtype=np.float64)
    chunks = np.array_split(data, threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def step_weight_bytes(path: Path) -> int:
    """Bytes of weights one AR step reads: every base tensor but the token embedding (one row of it is read),
    which a tied model reads in full as its output head; diff tensors are not read by the AR view."""
    tensors = {t.name: int(t.n_bytes) for t in open_reader(path).tensors}
    total = sum(n for name, n in tensors.items() if "_diff." not in name and name != "token_embd.weight")
    return total + (tensors["token_embd.weight"] if "output.weight" not in tensors else 0)


def profile_file(path: Path, prefixes: list[int], threads: int, reps: int, bandwidth: float, n_gpu_layers: int,
                 flash_attn: bool) -> dict:
    from ..model import Orthrus

    sizes = list(SIZES)
    weight_bytes = step_weight_bytes(path)
    floor = weight_bytes / bandwidth
    runs = []
    with warnings.catch_warnings():  # its quantized twins draft nothing anyone reads: random weights, timing only
        warnings.filterwarnings("ignore", message=".*diff weight matrices are stored below Q8_0")
        llm = Orthrus(path, block_size=max(sizes), n_ctx=max(prefixes) + 2 * max(sizes) + 8, n_threads=threads,
                      n_batch=512, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn)
    with llm:
        strict = llm.strict
        for prefix in prefixes:
            costs = measure_pass_costs(llm, sizes, prefix_len=prefix, reps=reps)
            cycles = measure_cycle_costs(llm, [k for k in sizes if k > 1], prefix_len=prefix, reps=reps)
            runs.append(summarize_run(costs.as_dict(), cycles, floor))
    return {"file": str(path), "file_bytes": path.stat().st_size, "step_weight_bytes": weight_bytes,
            "strict": strict, "runs": runs}


def summarize_run(profile: dict, cycles: dict[int, float], floor_s: float) -> dict:
    t1 = profile["t_step_s"]
    per_k = {}
    for k, row in profile["passes"].items():
        if row["t_draft_s"] is None:
            continue
        profiled = row["t_draft_s"] + row["t_verify_s"]
        cycle = cycles[int(k)]
        double = profile["passes"].get(2 * int(k))
        per_k[int(k)] = {"verify_over_step": row["t_verify_s"] / t1, "draft_over_step": row["t_draft_s"] / t1,
                         # a fused cycle's pass (verify K + draft K rows): what it costs against the two passes
                         "fused_pass_over_step": double["t_verify_s"] / t1 if double else None,
                         "t_cycle_s": cycle, "cycle_over_profiled": cycle / profiled,
                         "break_even_tokens_per_cycle": cycle / t1}
    projections = {}
    for label, accept in acceptance_table(per_k).items():
        projections[label] = {k: {"tokens_per_cycle": a, "speedup": a * t1 / per_k[k]["t_cycle_s"]}
                              for k, a in accept.items() if k in per_k}
    return {"prefix_tokens": profile["prefix_tokens"], "t_step_s": t1, "floor_step_s": floor_s,
            "profile": profile, "per_k": per_k, "projections": projections}


def run_shapes(names: list[str], weight_types: list[str], prefixes: list[int], threads: int, reps: int,
               cache: Path, n_gpu_layers: int = 0, flash_attn: bool = False, on_result=None) -> dict:
    """Profile every (shape, weight type); `on_result(report)` after each, so a long run keeps what it measured."""
    for name in names:
        if name not in shapes.SHAPES:
            raise PyorthrusError(f"--shape {name!r}: unknown; choose from {', '.join(shapes.SHAPES)}")
    device = {"cpu": cpu_name(), "accelerators": accelerators(), "n_gpu_layers": n_gpu_layers,
              "flash_attn": flash_attn}
    report = {"kind": "shapes", "label": "random weights: timing only", "device": device, "threads": threads,
              "memory_bandwidth_bytes_s": memory_bandwidth(threads), "sizes": list(SIZES), "results": []}
    jobs = [(n, t) for n in names for t in weight_types]
    for name, weight_type in tqdm(jobs, desc="shapes", unit="file", file=sys.stderr):
        path = shapes.make_shape_gguf(name, weight_type, cache, threads)
        row = profile_file(path, prefixes, threads, reps, report["memory_bandwidth_bytes_s"], n_gpu_layers,
                           flash_attn)
        report["results"].append({"shape": name, "weight_type": weight_type,
                                  "params": shapes.SHAPES[name].n_params, **row})
        if on_result:
            on_result(report)
    return report


def markdown(report: dict) -> str:
    sizes = [k for k in report["sizes"] if k > 1]
    lines = [f"# Where Orthrus pays: pass costs of real model shapes ({report['label']})", "",
             f"{_device_line(report)}; memory bandwidth "
             f"{report['memory_bandwidth_bytes_s'] / 1e9:.1f} GB/s (numpy read). A K-token pass and a whole cycle in "
             "units of one AR step t(1); break-even = tokens per cycle at which Orthrus equals AR (more than K: "
             "cannot pay at that K); projections at the shipped adapter's acceptance and the paper's (Qwen3-8B, "
             "K=32, carried to smaller K by a constant per-position rate).", "",
             "| shape | weights | prefix | t(1) ms | floor ms | " +
             " | ".join(f"pass/step K={k}" for k in PASS_COLUMNS) + " | " +
             " | ".join(f"break-even K={k}" for k in sizes) + " | in-loop / profiled | best: shipped | "
             "best: paper GSM8K | best: paper MBPP |",
             "|" + "---|" * (5 + len(PASS_COLUMNS) + len(sizes) + 4)]
    for res in report["results"]:
        for run in res["runs"]:
            per_k = run["per_k"]
            best = {label: max(((v["speedup"], k) for k, v in proj.items()), default=None)
                    for label, proj in run["projections"].items()}
            ratio = [per_k[k]["cycle_over_profiled"] for k in per_k]
            cells = [res["shape"], res["weight_type"], str(run["prefix_tokens"]), f"{run['t_step_s'] * 1e3:.0f}",
                     f"{run['floor_step_s'] * 1e3:.0f}"]
            cells += [f"{per_k[k]['verify_over_step']:.2f}" for k in PASS_COLUMNS]
            cells += [f"{per_k[k]['break_even_tokens_per_cycle']:.2f}" for k in sizes]
            cells.append(f"{min(ratio):.2f}–{max(ratio):.2f}")
            cells += [f"{b[0]:.2f}x (K={b[1]})" if b else "" for b in best.values()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _device_line(report: dict) -> str:
    device = report["device"]
    where = ", ".join(device["accelerators"]) if device["n_gpu_layers"] else device["cpu"]
    strict = {res["strict"] for res in report["results"]}
    return (f"{where} ({'all layers offloaded' if device['n_gpu_layers'] else 'CPU'}, flash attention "
            f"{'on' if device['flash_attn'] else 'off'}), {report['threads']} threads, "
            f"{'strict' if strict == {True} else 'fast'} run settings")


def plot(report: dict, out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [k for k in report["sizes"] if k > 1]
    ax.plot(sizes, sizes, "k:", label="K (every draft accepted)")
    for res in report["results"]:
        for run in res["runs"]:
            ax.plot(sizes, [run["per_k"][k]["break_even_tokens_per_cycle"] for k in sizes], marker="o",
                    label=f"{res['shape']} {res['weight_type']}, prefix {run['prefix_tokens']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("block size K")
    ax.set_ylabel("break-even tokens per cycle")
    ax.set_title(f"Break-even acceptance ({report['label']})")
    ax.legend(fontsize=7)
    path = out.with_name(out.name + "_break_even.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def run(args) -> int:
    # --shape, --weights and --prefixes arrive as lists (pyorthrus.cli_options.comma_list)
    if min(args.prefixes) < 1:
        raise PyorthrusError(f"--prefixes {','.join(map(str, args.prefixes))}: give positive integers")
    threads = args.threads or 1

    def write(report: dict) -> None:  # OUT.json and OUT.md (OUT may hold dots: "qwen3-1.7b")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
        text = markdown(report)
        png = plot(report, args.out)
        if png:
            text += f"\n![break-even acceptance]({png})\n"
        args.out.with_name(args.out.name + ".md").write_text(text)

    report = run_shapes(args.shape, args.weights, args.prefixes, threads, args.profile_reps,
                        args.shape_cache or shapes.default_cache(), args.n_gpu_layers, args.flash_attn,
                        on_result=write if args.out else None)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0
