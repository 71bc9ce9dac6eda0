"""Cost of one K-token pass, strict vs fast CPU flavour: the verify (AR) and draft views of SmolLM2-135M, K = 1...32,
after a 128-token prefix, median of several repetitions (each pass timed by pyorthrus.pass_costs.timed_pass).

The flavour is the installed library's (`pyorthrus build --flavour strict|fast`), so each flavour runs in its own
environment; the run configuration follows it (strict: GGML_CPU_TILED_MM=0 and use_extra_bufts=False; fast: the
llama.cpp defaults). Every pass records wall time and the process's CPU time; the merged table uses CPU time by
default (--clock), which with one thread is the pass's own work even when the machine is shared.

    # one measurement with this environment's build
    python bench/passcost.py run --out strict_r0.json
    # alternate the two environments' builds (S F F S S F ...) to cancel machine drift, then merge
    python bench/passcost.py ab --strict-python .venv/bin/python --fast-python /work/fastvenv/bin/python \\
        --rounds 4 --dir bench/results/passcost_runs --out bench/results/passcost_cpu
    # the Markdown table from any set of run files
    python bench/passcost.py merge strict_r0.json fast_r0.json ... --out bench/results/passcost_cpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = (1, 2, 4, 8, 12, 16, 24, 32)
MODELS = ("Q4_1", "Q4_K_M")


def pass_profile(llm, sizes: list[int], prefix_len: int, reps: int) -> dict:
    """Median seconds of one K-token pass in the verify (AR) and draft views after a prefix_len-token cache.

    Like pyorthrus's own profile (its timed_pass times each pass), but the two views alternate rep by rep, so
    drift during a K hits both alike, and every pass is kept, on the wall and the CPU clock."""
    from pyorthrus import prompts
    from pyorthrus.pass_costs import timed_pass

    text = " ".join(p["prompt"] for p in prompts.load("gsm8k", 8))
    prompt = llm.tokenize(text)[:prefix_len + 1]
    if len(prompt) < prefix_len + 1:
        raise SystemExit(f"prefix text has only {len(prompt)} tokens")
    llm.engine.prefill(prompt)
    position = len(prompt) - 1
    rows = {}
    for k in sizes:
        block = prompt[:k]
        views = (False, True) if k > 1 else (False,)  # a one-token draft is no draft
        wall = {diffusion: [] for diffusion in views}
        cpu = {diffusion: [] for diffusion in views}
        for diffusion in views:
            timed_pass(llm, block, position, diffusion)  # warm-up (graph build)
        for _ in range(reps):
            for diffusion in views:
                # On a shared machine the wall time mostly measures how long the scheduler kept us waiting; the
                # process's CPU time does not (with one thread it is the pass's own work, plus a little set-up).
                cpu_start = time.process_time()
                wall[diffusion].append(timed_pass(llm, block, position, diffusion))
                cpu[diffusion].append(time.process_time() - cpu_start)
        rows[k] = {"t_verify_s": statistics.median(wall[False]),
                   "t_draft_s": statistics.median(wall[True]) if k > 1 else None,
                   "wall_verify_s": wall[False], "wall_draft_s": wall.get(True),
                   "cpu_verify_s": cpu[False], "cpu_draft_s": cpu.get(True)}
    t1 = rows[min(rows)]["t_verify_s"]
    for row in rows.values():
        row["pass_over_step"] = row["t_verify_s"] / t1
    return {"prefix_tokens": position, "t_step_s": t1, "passes": rows}


def weight_types(path: Path) -> dict[str, float]:
    """Share of the matrix weights per storage type: llama.cpp falls back from K-quants on SmolLM2's 576-wide
    rows, so a "Q4_K_M" file is mostly other types, which decides which kernels run."""
    from pyorthrus.gguf_meta import open_reader

    counts: dict[str, int] = {}
    for tensor in open_reader(path).tensors:
        if len(tensor.shape) > 1:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + int(tensor.n_elements)
    total = sum(counts.values())
    return {name: round(n / total, 3) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def measure(args) -> int:
    # ggml's OpenMP workers spin while waiting, which on a shared machine stalls passes; set before libgomp loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pyorthrus.testing.adapters import write_identity_adapter

    from pyorthrus import Orthrus
    from pyorthrus.build import installed_build_info
    from smollm2_quants import model_file  # the shipped Q4_1 GGUF, or a requantized copy (as bench/fidelity.py's)

    build = installed_build_info()
    flavour = (build["build"] or {}).get("flavour")
    if flavour not in ("strict", "fast"):
        raise SystemExit(f"the installed llama_cpp is not a pyorthrus build (flavour {flavour!r})")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(k) for k in args.ks.split(",")]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    device = {"cpu": cpu, "cores": os.cpu_count(), "llama_cpp_python": build["llama_cpp_python"],
              "cmake_args": build["build"]["cmake_args"], "system_info": build["system_info"]}
    report = {"flavour": flavour, "device": device, "round": args.round, "threads": args.threads, "reps": args.reps,
              "prefix": args.prefix, "loadavg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "models": {}}
    for quant in args.quants.split(","):
        path = model_file(quant, work)
        adapter = Path(args.adapter) if args.adapter else write_identity_adapter(
            path, work / f"identity.{quant}.K{max(sizes)}.gguf", block_size=max(sizes))
        # the run configuration follows the build (Orthrus' default would be strict on any CPU build)
        with Orthrus(path, adapter, n_threads=args.threads, n_ctx=1024, strict=(flavour == "strict")) as llm:
            profile = pass_profile(llm, sizes, args.prefix, args.reps)
        report["models"][quant] = {"model": path.name, "adapter": adapter.name, "weight_types": weight_types(path),
                                   **profile}
        print(f"{flavour} {quant}: " + "  ".join(f"K={k} {row['t_verify_s'] * 1e3:.1f}ms" for k, row in
                                                 profile["passes"].items()), file=sys.stderr, flush=True)
    report["loadavg_after"] = os.getloadavg()
    report["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def alternate(args) -> int:
    """Rounds of one strict and one fast process, the order flipping every round (S F, F S, S F, ...), so a slow
    drift of the machine's load hits both flavours alike."""
    pythons = {"strict": args.strict_python, "fast": args.fast_python}
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for r in range(args.rounds):
        for flavour in (("strict", "fast") if r % 2 == 0 else ("fast", "strict")):
            out = out_dir / f"passcost_{flavour}_r{r}.json"
            cmd = [pythons[flavour], __file__, "run", "--out", str(out), "--round", str(r), "--ks", args.ks,
                   "--quants", args.quants, "--reps", str(args.reps), "--prefix", str(args.prefix),
                   "--threads", str(args.threads), "--work", args.work, *(["--adapter", args.adapter]
                                                                          if args.adapter else [])]
            print(f"round {r}: {flavour} ({pythons[flavour]})", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            got = json.loads(out.read_text())["flavour"]
            if got != flavour:
                raise SystemExit(f"{pythons[flavour]} has a {got!r} build, expected {flavour!r}")
            files.append(out)
    return write_merged([str(f) for f in files], args.out, args.stat, args.clock)


def _median_and_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def _pass_time(run: dict, quant: str, k: str, view: str, stat: str, clock: str) -> float | None:
    """One run's time for a K and view on the wall or CPU clock: the median of its passes, or their minimum."""
    samples = run["models"][quant]["passes"][k][f"{clock}_{view}_s"]
    if samples is None:
        return None
    return min(samples) if stat == "min" else statistics.median(samples)


def merge(files: list[str], stat: str = "median", clock: str = "cpu") -> dict:
    """Per model, K and view: the median over rounds of each flavour's per-round time (median or minimum of its
    passes), and the fast/strict ratio as the median of per-round ratios (rounds paired by their round number);
    pass/step is each run's K-token verify over its own one-token step, median over rounds."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    by = {(run["flavour"], run["round"]): run for run in runs}
    rounds = sorted({r for f, r in by if ("strict", r) in by and ("fast", r) in by})
    if not rounds:
        raise SystemExit("need a strict and a fast run of the same round")
    first = by[("strict", rounds[0])]
    merged = {"stat": stat, "clock": clock, "rounds": rounds, "threads": first["threads"], "reps": first["reps"],
              "device": first["device"], "loadavg": [run["loadavg_before"][0] for run in runs], "models": {}}
    for quant in first["models"]:
        passes = first["models"][quant]["passes"]
        step = min(passes, key=int)
        rows = {}
        for k in passes:
            row = {}
            for view in ("verify", "draft"):
                per = {f: [_pass_time(by[(f, r)], quant, k, view, stat, clock) for r in rounds]
                       for f in ("strict", "fast")}
                if per["strict"][0] is None:
                    continue
                row[view] = {f: _median_and_range(per[f]) for f in per}
                row[view]["fast_over_strict"] = _median_and_range([b / a for a, b in zip(per["strict"], per["fast"])])
            row["pass_over_step"] = {
                f: statistics.median(_pass_time(by[(f, r)], quant, k, "verify", stat, clock) /
                                     _pass_time(by[(f, r)], quant, step, "verify", stat, clock) for r in rounds)
                for f in ("strict", "fast")}
            rows[int(k)] = row
        merged["models"][quant] = {"adapter": first["models"][quant]["adapter"],
                                   "weight_types": first["models"][quant].get("weight_types"),
                                   "prefix_tokens": first["models"][quant]["prefix_tokens"], "passes": rows}
    return merged


def markdown(merged: dict) -> str:
    dev = merged["device"]
    clock = ("CPU time of the measuring process (one thread: the pass's own work, not the time spent waiting for "
             "a core)" if merged["clock"] == "cpu" else "wall time")
    lines = ["# One K-token pass: strict vs fast CPU flavour", "",
             f"{dev['cpu']}, {merged['threads']} thread(s); llama-cpp-python {dev['llama_cpp_python']} + pyorthrus "
             "patches. strict: built with -DGGML_LLAMAFILE=OFF, run with GGML_CPU_TILED_MM=0 and "
             "use_extra_bufts=False. fast: llamafile sgemm on, llama.cpp's default run settings.", "",
             f"The machine has 2 cores shared with a training job and other tests (1-minute load average during the "
             f"runs: {min(merged['loadavg']):.1f}-{max(merged['loadavg']):.1f}), so absolute times are noisy. The "
             f"flavours ran as alternating processes ({len(merged['rounds'])} rounds, order flipped every round). "
             f"Clock: {clock}. Each time is the {merged['stat']} of {merged['reps']} passes per run, then the median "
             "over rounds; fast/strict is the median (min-max) of the per-round ratios; pass/step is a K-token "
             "verify pass over the one-token step of the same run. Prefer the ratios.", ""]
    for quant, m in merged["models"].items():
        header = ("K", "verify ms strict", "verify ms fast", "verify fast/strict", "draft ms strict", "draft ms fast",
                  "draft fast/strict", "pass/step strict", "pass/step fast")
        lines += [f"## SmolLM2-135M-Instruct {quant} (adapter {m['adapter']}, {m['prefix_tokens']}-token prefix)",
                  ""]
        if m.get("weight_types"):
            lines += ["Matrix weights: " + ", ".join(f"{share:.0%} {name}" for name, share in
                                                     m["weight_types"].items()) + ".", ""]
        lines += ["| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
        for k, row in m["passes"].items():
            cells = [str(k)]
            for view in ("verify", "draft"):
                if view in row:
                    ratio = row[view]["fast_over_strict"]
                    cells += [f"{row[view]['strict'][0] * 1e3:.1f}", f"{row[view]['fast'][0] * 1e3:.1f}",
                              f"{ratio[0]:.2f} ({ratio[1]:.2f}-{ratio[2]:.2f})"]
                else:
                    cells += ["-", "-", "-"]
            cells += [f"{row['pass_over_step']['strict']:.2f}", f"{row['pass_over_step']['fast']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_merged(files: list[str], out: str | None, stat: str = "median", clock: str = "cpu") -> int:
    merged = merge(files, stat, clock)
    text = markdown(merged)
    if out:
        Path(out).with_suffix(".json").write_text(json.dumps({"files": files, **merged}, indent=1) + "\n")
        Path(out).with_suffix(".md").write_text(text)
    print(text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="measure with this environment's build; write JSON")
    ab_p = sub.add_parser("ab", help="alternate a strict and a fast environment, then merge")
    for p in (run_p, ab_p):
        p.add_argument("--ks", default=",".join(map(str, SIZES)))
        p.add_argument("--quants", default=",".join(MODELS))
        p.add_argument("--reps", type=int, default=9, help="passes per K and view (median)")
        p.add_argument("--prefix", type=int, default=128, help="cached tokens before the pass")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--adapter", default=None, help="default: an identity adapter with block size max(K)")
        p.add_argument("--work", default=str(Path.home() / ".cache" / "pyorthrus" / "passcost"),
                       help="where requantized models and identity adapters go")
    run_p.add_argument("--out", required=True)
    run_p.add_argument("--round", type=int, default=0, help="pairs a strict and a fast run in the merge")
    ab_p.add_argument("--strict-python", required=True)
    ab_p.add_argument("--fast-python", required=True)
    ab_p.add_argument("--rounds", type=int, default=4)
    ab_p.add_argument("--dir", required=True, help="where the per-run JSON files go")
    ab_p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    merge_p = sub.add_parser("merge", help="Markdown table from run JSON files")
    merge_p.add_argument("files", nargs="+")
    merge_p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    for p in (ab_p, merge_p):
        p.add_argument("--stat", choices=["median", "min"], default="median",
                       help="per run, the median of the passes or their minimum")
        p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                       help="the process's CPU time per pass (default; robust to a shared machine with one "
                            "thread) or wall time")
    args = ap.parse_args()
    if args.command == "run":
        return measure(args)
    if args.command == "ab":
        return alternate(args)
    return write_merged(args.files, args.out, args.stat, args.clock)


if __name__ == "__main__":
    sys.exit(main())
