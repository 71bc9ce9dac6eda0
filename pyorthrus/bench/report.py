"""Reports of `pyorthrus bench`: the Markdown of one run, its PNG plots, and the cross-device comparison of several
runs (`pyorthrus bench compare`). Plots need matplotlib (`pip install 'pyorthrus[bench]'`); without it they are
skipped with a one-line note."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli_options import AR_LABEL, AUTO_KEY, key_options
from ..errors import PyorthrusError

NAN = float("nan")


def _fixed_k_modes(summary: dict) -> list[tuple[dict, str, dict]]:
    """(generate() arguments, key, summary entry) of each fixed-K mode of a summary (keys: cli_options.mode_key)."""
    return [(options, key, e) for key, e in summary.items() if (options := key_options(key)) is not None]


def _fixed_k(summary: dict, fused: bool = False) -> list[tuple[int, dict]]:
    """(K, summary entry) of each fixed-block-size chain mode (fused: of each fused one), in increasing K."""
    return sorted((o["block_size"], e) for o, _, e in _fixed_k_modes(summary)
                  if not o.get("tree") and bool(o.get("fused")) == fused)


def _modes(summary: dict) -> list[tuple[str, str, dict]]:
    """(label, key, summary entry) of each Orthrus mode: fixed K in increasing order, fused ones the same, trees
    by K then nodes, then auto."""
    def order(mode: tuple[dict, str, dict]) -> tuple[int, int, int]:
        options = mode[0]
        return 2 if options.get("tree") else 1 if options.get("fused") else 0, options["block_size"], \
            options.get("tree", 0)

    modes = [(_label(o), key, e) for o, key, e in sorted(_fixed_k_modes(summary), key=order)]
    return modes + ([("auto", AUTO_KEY, summary[AUTO_KEY])] if AUTO_KEY in summary else [])


def _label(options: dict) -> str:
    """A fixed-K mode in the report's words: K=4, K=4 fused, K=4 tree 8."""
    return f"K={options['block_size']}" + (" fused" if options.get("fused") else "") + \
        (f" tree {options['tree']}" if options.get("tree") else "")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def device_label(report: dict) -> str:
    dev = report["device"]
    accelerators = dev.get("accelerators") or []
    return accelerators[0] if dev.get("n_gpu_layers") and accelerators else f"{dev['cpu']}, {dev['threads']} threads"


def markdown(report: dict, plots: list[Path] | None = None) -> str:
    s, dev = report["summary"], report["device"]
    lines = [f"# pyorthrus bench: {Path(report['model']).name} + {Path(report['adapter'] or '-').name}", "",
             f"{device_label(report)} ({dev['machine']}), backend {dev['backend']} ({dev['flavour']}); prompts: "
             f"{report['prompts']} x {report['n_prompts']}, {report['max_tokens']} tokens, greedy.", "",
             "| mode | tok/s (median) | speedup vs AR (median, min-max) | tokens/cycle | predicted | "
             "measured/predicted | loop overhead | first token ms | identical to AR |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| AR | {s['ar_tok_s_median']:.1f} | 1.00 | 1.00 | | | | "
             f"{s.get('ar_first_token_s_median', NAN) * 1e3:.0f} | |"]
    for label, _, e in _modes(s):
        lines.append(f"| Orthrus {label} | {e['tok_s_median']:.1f} | {e['speedup_median']:.2f} "
                     f"({e['speedup_min']:.2f}-{e['speedup_max']:.2f}) | {_number(e['tokens_per_cycle'])} | "
                     f"{e.get('predicted_speedup', NAN):.2f} | {e.get('measured_over_predicted', NAN):.2f} | "
                     f"{e.get('loop_overhead_share', NAN):.1%} | {e.get('first_token_s_median', NAN) * 1e3:.0f} | "
                     f"{e['identical_rate']:.0%} |")
    if "peer_prompt_lookup_speedup_median" in s:
        lines.append(f"| prompt lookup (llama-cpp-python, end to end) | | "
                     f"{s['peer_prompt_lookup_speedup_median']:.2f} | | | | | | |")
    lines += ["", "Predicted: the device profile's time for what the mode ran (its cycles at their K, its AR steps "
              "at one step each); loop overhead: the share of decode time outside the passes."]
    fused = [(label, e) for label, _, e in _modes(s) if "carried_share" in e]
    if fused:
        shares = ", ".join(f"{label}: {e['carried_share']:.0%} ({_number(e.get('passes_per_cycle'))} "
                           "passes/cycle)" for label, e in fused)
        lines += ["", "Fused cycles (each verify pass also drafts the next block); cycles whose draft was carried "
                  f"over (one pass instead of two): {shares}."]
    trees = [(label, e) for label, _, e in _modes(s) if "offchain_share" in e]
    if trees:
        shares = ", ".join(f"{label}: {e['offchain_share']:.0%}" for label, e in trees)
        lines += ["", "Trees (each verify pass checks a tree of draft continuations, not only the argmax chain); cycles "
                  f"whose committed path left the chain: {shares}."]
    if AUTO_KEY in s:
        auto = s[AUTO_KEY]
        cycles = ", ".join(f"K={k}: {n}" for k, n in auto["block_size_histogram"].items()) or "none"
        lines += ["", f"Auto: {auto['ar_step_share']:.0%} of the tokens from plain AR steps; Orthrus cycles by "
                      f"block size: {cycles}."]
        state = report.get("auto_state")
        if state:
            lines[-1] += (f" Final estimate: best K={state['best_block_size']} at "
                          f"{state['best_over_ar']:.2f}x the AR rate.")
    if "ar_kv_bytes_per_cell" in s:
        kv = [f"AR {s['ar_kv_bytes_per_cell']:.0f}"] + [f"Orthrus {label} {e['kv_bytes_per_cell']:.0f}"
                                                       for label, _, e in _modes(s)]
        lines += ["", f"KV cache after a generation (sequence 0, bytes per cached token): {', '.join(kv)}. Both "
                      "views share one cache; a cycle adds at most K transient cells, removed before it returns."]
    lines += ["", "Device profile (one pass, median):", "", "| K | verify pass ms | draft pass ms | pass / 1-token "
              "step | ceiling speedup (all drafts accepted) |", "|---|---|---|---|---|"]
    for k, p in report["profile"]["passes"].items():
        draft = f"{p['t_draft_s'] * 1e3:.1f}" if p["t_draft_s"] else "-"
        ceiling = f"{p['ceiling_speedup']:.2f}" if p["ceiling_speedup"] else "-"
        lines.append(f"| {k} | {p['t_verify_s'] * 1e3:.1f} | {draft} | {p['pass_over_step']:.2f} | {ceiling} |")
    if plots:
        lines += [""] + [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib.pyplot on a file-only backend, or None (with a one-line note) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'pyorthrus[bench]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: dict, out: Path) -> list[Path] | None:
    """Write OUT_tok_s.png, OUT_speedup.png, OUT_acceptance.png and OUT_pass_cost.png; their paths, or None when
    matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    s, rows = report["summary"], report["rows"]
    title = device_label(report)
    paths = []

    def save(fig, name: str) -> None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = out.with_name(f"{out.with_suffix('').name}_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    keys = [("AR", AR_LABEL)] + [(f"Orthrus {label}", key) for label, key, _ in _modes(s)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, key) in enumerate(keys):
        values = sorted(r[key]["tok_s"] for r in rows)
        median = values[len(values) // 2]
        ax.bar(i, median, color="tab:gray" if key == AR_LABEL else "tab:blue")
        ax.errorbar(i, median, yerr=[[median - values[0]], [values[-1] - median]], color="black", capsize=3)
    ax.set_xticks(range(len(keys)), [label for label, _ in keys], rotation=20)
    ax.set_ylabel("tokens/s (median over prompts, min-max)")
    save(fig, "tok_s")

    fixed = _fixed_k(s)
    fig, ax = plt.subplots(figsize=(7, 4))
    if fixed:
        ks = [k for k, _ in fixed]
        measured = [e["speedup_median"] for _, e in fixed]
        errors = [[e["speedup_median"] - e["speedup_min"] for _, e in fixed],
                  [e["speedup_max"] - e["speedup_median"] for _, e in fixed]]
        ax.errorbar(ks, measured, yerr=errors, marker="o", capsize=3, label="measured (median, min-max)")
        ax.plot(ks, [e.get("predicted_speedup", NAN) for _, e in fixed], marker="s", linestyle="--",
                label="predicted (profile x tokens/cycle)")
    fused = _fixed_k(s, fused=True)
    if fused:
        ax.plot([k for k, _ in fused], [e["speedup_median"] for _, e in fused], marker="^",
                label="measured, fused cycles (median)")
    ceiling = [(int(k), p["ceiling_speedup"]) for k, p in report["profile"]["passes"].items() if p["ceiling_speedup"]]
    ax.plot([k for k, _ in ceiling], [c for _, c in ceiling], linestyle=":", color="gray",
            label="ceiling (every draft accepted)")
    ax.axhline(1.0, color="black", linewidth=0.8, label="AR")
    if AUTO_KEY in s:
        ax.axhline(s[AUTO_KEY]["speedup_median"], color="tab:green", linestyle="-.", label="auto (measured)")
    ax.set_xlabel("block size K")
    ax.set_ylabel("speedup vs AR")
    ax.legend(fontsize=8)
    save(fig, "speedup")

    fig, ax = plt.subplots(figsize=(7, 4))
    modes = _modes(s)
    width = 0.8 / max(1, len(modes))
    for i, (label, _, e) in enumerate(modes):
        histogram = {int(a): n for a, n in e["accepted_histogram"].items()}
        total = sum(histogram.values())
        if total:
            ax.bar([a + 1 + (i - (len(modes) - 1) / 2) * width for a in histogram],
                   [n / total for n in histogram.values()], width=width, label=label)
    ax.set_xlabel("tokens committed per cycle (accepted drafts + 1)")
    ax.set_ylabel("share of cycles")
    ax.legend(fontsize=8)
    save(fig, "acceptance")

    fig, ax = plt.subplots(figsize=(7, 4))
    passes = sorted((int(k), p) for k, p in report["profile"]["passes"].items())
    ax.plot([k for k, _ in passes], [p["pass_over_step"] for _, p in passes], marker="o", label="verify pass (AR view)")
    t1 = report["profile"]["t_step_s"]
    drafts = [(k, p["t_draft_s"] / t1) for k, p in passes if p["t_draft_s"]]
    ax.plot([k for k, _ in drafts], [d for _, d in drafts], marker="s", label="draft pass (diffusion view)")
    ax.plot([k for k, _ in passes], [k for k, _ in passes], linestyle=":", color="gray", label="K one-token steps")
    ax.axhline(1.0, color="black", linewidth=0.8, label="one step")
    ax.set_xlabel("tokens in the pass (K)")
    ax.set_ylabel("pass time / one-token step")
    ax.legend(fontsize=8)
    save(fig, "pass_cost")
    return paths


def _load(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PyorthrusError(f"{path}: not a readable JSON file ({exc})") from exc
    if "summary" not in report or "device" not in report:
        raise PyorthrusError(f"{path}: not a `pyorthrus bench --out` report (no summary; --profile-only run?)")
    return report


def _run_labels(paths: list[Path]) -> list[str]:
    """A name per report: its file name without .json, or its path where names repeat."""
    stems = [path.stem for path in paths]
    return [stem if stems.count(stem) == 1 else str(path.with_suffix("")) for stem, path in zip(stems, paths)]


def compare_markdown(reports: list[tuple[Path, dict]]) -> str:
    lines = ["| report | device | backend | AR tok/s | best K | speedup | tokens/cycle | predicted | auto speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, (_, report) in zip(_run_labels([path for path, _ in reports]), reports):
        s, dev = report["summary"], report["device"]
        fixed = _fixed_k(s)
        k, best = max(fixed, key=lambda item: item[1]["speedup_median"]) if fixed else ("-", {})
        auto = s.get(AUTO_KEY, {}).get("speedup_median", NAN)
        lines.append(f"| {label} | {device_label(report)} | {dev['backend']} ({dev['flavour']}) | "
                     f"{s['ar_tok_s_median']:.1f} | {k} | {best.get('speedup_median', NAN):.2f} | "
                     f"{_number(best.get('tokens_per_cycle'))} | {best.get('predicted_speedup', NAN):.2f} | "
                     f"{auto:.2f} |")
    return "\n".join(lines) + "\n"


def compare_plot(reports: list[tuple[Path, dict]], out: Path) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (_, report) in zip(_run_labels([path for path, _ in reports]), reports):
        fixed = _fixed_k(report["summary"])
        line = ax.plot([k for k, _ in fixed], [e["speedup_median"] for _, e in fixed], marker="o",
                       label=f"{label}: {device_label(report)}")[0]
        if AUTO_KEY in report["summary"]:
            ax.axhline(report["summary"][AUTO_KEY]["speedup_median"], color=line.get_color(), linestyle="-.",
                       linewidth=0.8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("block size K (dash-dot: auto)")
    ax.set_ylabel("speedup vs AR (median)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_compare(paths: list[Path], out: Path | None) -> int:
    reports = [(path, _load(path)) for path in paths]
    table = compare_markdown(reports)
    print(table, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        image = compare_plot(reports, out)
        out.with_suffix(".md").write_text("# pyorthrus bench compare\n\n" + table +
                                          (f"\n![speedup vs K]({image.name})\n" if image else ""))
    return 0
