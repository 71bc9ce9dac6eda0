"""`pyorthrus demo`: the embedded default (SmolLM2-135M-Instruct + the shipped Orthrus adapter) on this machine.

Each prompt runs in every mode on the same model and context: plain AR decoding, `auto` (per round the block size,
or a plain AR step, that the measured pass costs and the acceptance so far favour) and each fixed block size. The
modes take turns, --repeats times, and each keeps its fastest run: one run of a short answer moves by 5-15% with
whatever else the machine does, which would read as the mode's own cost. The demo prints the answer once, then per
mode its speed against AR, tokens per cycle, forward passes per token and whether its tokens are identical to AR's;
at the end the totals, the best fixed K, and what limits the speedup on this machine, from the pass costs `auto`
measured: the break-even acceptance and what the same acceptance would give where a K-token pass costs about one
step (GPUs, Apple M5).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import assets
from .cli_options import AR_LABEL, check_arguments, mode_label, mode_options, parse_modes
from .errors import PyorthrusError
from .model import AUTO
from .stats import tokens_per_cycle

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
]


def _modes(text: str) -> list[int | str]:
    try:
        return parse_modes(text, "-k")
    except PyorthrusError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("-k ")) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run SmolLM2-135M-Instruct with the shipped Orthrus adapter on a few prompts: plain AR, "
                          "Orthrus 'auto' and fixed block sizes side by side, with token identity to AR, tokens per "
                          "cycle, speed, and what limits the speedup on this machine.")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate per prompt")
    parser.add_argument("-k", "--block-sizes", type=_modes, default=[4, 8, 16, "16t16"], metavar="K,K,...",
                        help="fixed block sizes to compare with AR and auto: integers K, 'KtN' (K verifying a tree "
                             "of N draft nodes per pass) or 'Kf' (K with fused cycles) (default: 4,8,16,16t16)")
    parser.add_argument("-r", "--repeats", type=int, default=2,
                        help="runs of every mode per prompt, taking turns; each keeps its fastest (default 2)")
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="CPU threads (default: every CPU this process may use)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _generate(llm, ar, mode, tokens, max_tokens: int):
    if mode == 1:
        return ar.generate(tokens, max_tokens=max_tokens)
    return llm.generate(tokens, max_tokens=max_tokens, **mode_options(mode))


def _fastest(runs):
    return min(runs, key=lambda run: run.stats.t_total_s)


def _mode_row(runs, base) -> dict:
    """A mode's fastest run against AR's fastest; identical only if every run's tokens are AR's."""
    out = _fastest(runs)
    s = out.stats
    return {"tokens": len(out.tokens), "tok_s": s.tokens_per_second, "t_s": s.t_total_s,
            "speedup": s.tokens_per_second / base.stats.tokens_per_second,
            "tokens_per_cycle": s.tokens_per_cycle if s.mode == "orthrus" else None,
            "cycles": s.n_cycles, "ar_steps": s.n_ar_steps,
            "passes": s.n_passes, "carried": s.n_carried, "offchain": s.n_offchain,
            "identical": all(run.tokens == base.tokens for run in runs)}


def _totals(rows: list[dict], mode: str) -> dict:
    modes = [r["modes"][mode] for r in rows]
    tokens, seconds = sum(m["tokens"] for m in modes), sum(m["t_s"] for m in modes)
    ar_seconds = sum(r["modes"][AR_LABEL]["t_s"] for r in rows)
    cycles, ar_steps = sum(m["cycles"] for m in modes), sum(m["ar_steps"] for m in modes)
    return {"tokens": tokens, "tok_s": tokens / seconds, "speedup": ar_seconds / seconds,
            "tokens_per_cycle": tokens_per_cycle(tokens, ar_steps, cycles, None), "cycles": cycles,
            "ar_steps": ar_steps, "passes_per_token": sum(m["passes"] for m in modes) / tokens,
            "carried": sum(m["carried"] for m in modes), "offchain": sum(m["offchain"] for m in modes),
            "identical": all(m["identical"] for m in modes)}


def _limits(costs, block_size: int, tokens_per_cycle: float) -> dict:
    """What the measured pass costs say about a K-block cycle here: its cost in AR steps is the acceptance Orthrus
    needs to break even; where a K-token pass costs one step, a cycle costs two and the same acceptance gives
    tokens_per_cycle / 2."""
    cycle_steps = costs.cycle(block_size) / costs.t_step_s
    return {"block_size": block_size, "t_step_ms": costs.t_step_s * 1e3,
            "draft_pass_steps": costs.draft(block_size) / costs.t_step_s,
            "verify_pass_steps": costs.verify(block_size) / costs.t_step_s, "cycle_steps": cycle_steps,
            "break_even_tokens_per_cycle": cycle_steps, "tokens_per_cycle": tokens_per_cycle,
            "predicted_speedup": tokens_per_cycle / cycle_steps,
            "speedup_if_pass_costs_one_step": tokens_per_cycle / 2}


def _table(entries: dict[str, dict]) -> str:
    lines = [f"  {'mode':<7} {'tok/s':>7} {'vs AR':>6} {'tok/cycle':>9} {'passes/tok':>10}  identical to AR"]
    for mode, m in entries.items():
        per_cycle = f"{m['tokens_per_cycle']:.2f}" if m["tokens_per_cycle"] else "-"
        passes = m["passes_per_token"] if "passes_per_token" in m else m["passes"] / m["tokens"]
        notes = [] if mode != mode_label(AUTO) else [f"{m['ar_steps']} of {m['tokens']} tokens as AR steps"]
        if m["carried"]:
            notes.append(f"{m['carried']} fused cycles carried")
        if m["offchain"]:
            notes.append(f"{m['offchain']} of {m['cycles']} cycles off the argmax chain")
        same = "-" if mode == AR_LABEL else "yes" if m["identical"] else "NO"
        lines.append(f"  {mode:<7} {m['tok_s']:>7.1f} {m['speedup']:>5.2f}x {per_cycle:>9} {passes:>10.2f}  {same}"
                     + (f"  ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


def _tree_gains(totals: dict, modes: list) -> list[dict]:
    """Each tree mode against the chain of its K, where both ran: tokens per cycle (= per verify pass) and gain."""
    gains = []
    for mode in modes:
        options = mode_options(mode)
        chain = mode_label(options["block_size"])
        if options.get("tree") and chain in totals and totals[chain]["tokens_per_cycle"]:
            tree, base = totals[mode_label(mode)]["tokens_per_cycle"], totals[chain]["tokens_per_cycle"]
            gains.append({"mode": mode, "block_size": options["block_size"], "tree": options["tree"],
                          "tokens_per_cycle": tree, "chain_tokens_per_cycle": base, "gain": tree / base - 1.0})
    return gains


def run(args: argparse.Namespace) -> int:
    from .model import Orthrus

    check_arguments(args)
    if args.repeats < 1:
        raise PyorthrusError(f"--repeats {args.repeats}: must be >= 1")
    model_path, adapter_path = assets.smollm2_gguf(), assets.default_adapter()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    with Orthrus(model_path, adapter_path, block_size=AUTO, n_ctx=2048, n_threads=args.threads,
                 system_prompt=assets.EMBEDDED_SYSTEM_PROMPT) as llm:
        for k in args.block_sizes:
            options = mode_options(k)
            llm.check_block_size(options["block_size"], options.get("fused"))
            llm.check_tree(options.get("tree", 0), options["block_size"], options.get("fused"))
        say(f"model   {model_path.name}\nadapter {adapter_path.name} (trained K={llm.trained_block_size})")
        modes = [1, AUTO, *args.block_sizes]
        ar = llm.ar_view()
        # build every mode's graphs first; auto measures this machine's pass costs here, once
        print("warming up and measuring this machine's pass costs ...", file=sys.stderr, flush=True)
        warmup = llm.tokenize("Hello")
        for k in modes:
            _generate(llm, ar, k, warmup, 8)
        rows = []
        for prompt in DEMO_PROMPTS:
            tokens = llm.tokenize(llm.chat_prompt([{"role": "user", "content": prompt}]))
            runs = {mode_label(k): [] for k in modes}
            for _ in range(args.repeats):
                for k in modes:
                    runs[mode_label(k)].append(_generate(llm, ar, k, tokens, args.max_tokens))
            base = _fastest(runs[AR_LABEL])
            row = {"prompt": prompt, "text": base.text,
                   "modes": {name: _mode_row(mode_runs, base) for name, mode_runs in runs.items()}}
            rows.append(row)
            say(f"\n>>> {prompt}\n{base.text.strip()}\n{_table(row['modes'])}")
        costs = llm.auto_controller.costs
    totals = {mode_label(k): _totals(rows, mode_label(k)) for k in modes}
    # the limits are those of a chain cycle (its passes are the profile's); trees are set against their chain below
    chains = [k for k in args.block_sizes if isinstance(k, int)] or [llm.trained_block_size]
    best = max(chains, key=lambda k: totals[mode_label(k)]["speedup"] if mode_label(k) in totals else 0.0)
    limits = _limits(costs, best, totals[mode_label(best)]["tokens_per_cycle"] if mode_label(best) in totals else 0.0)
    trees = _tree_gains(totals, args.block_sizes)
    summary = {"all_identical": all(t["identical"] for t in totals.values()), "modes": totals,
               "best_fixed_block_size": best, "limits": limits, "trees": trees, "pass_costs": costs.as_dict()}
    if args.json:
        print(json.dumps({"model": str(model_path), "adapter": str(adapter_path),
                          "system_prompt": assets.EMBEDDED_SYSTEM_PROMPT, "summary": summary, "prompts": rows},
                         indent=2))
        return 0 if summary["all_identical"] else 1
    auto = totals[mode_label(AUTO)]
    print(f"\n== all {len(rows)} prompts ==\n{_table(totals)}\n"
          f"\nBest fixed block size here: K={best}, {totals[mode_label(best)]['speedup']:.2f}x AR. What limits it: on "
          f"this machine one AR step takes {limits['t_step_ms']:.1f} ms and a K={best} cycle (a draft pass of "
          f"{limits['draft_pass_steps']:.1f} steps + a verify pass of {limits['verify_pass_steps']:.1f}) costs "
          f"{limits['cycle_steps']:.1f} steps, so Orthrus breaks even at {limits['cycle_steps']:.1f} tokens per "
          f"cycle; the shipped adapter commits {limits['tokens_per_cycle']:.2f} (predicted "
          f"{limits['predicted_speedup']:.2f}x). Where a K-token pass costs about one step (GPUs, Apple M5) the same "
          f"acceptance would give {limits['speedup_if_pass_costs_one_step']:.2f}x.\n"
          + "".join(f"Tree of {g['tree']} at K={g['block_size']}: {g['tokens_per_cycle']:.2f} tokens per verify pass vs "
                    f"{g['chain_tokens_per_cycle']:.2f} for the chain (+{g['gain'] * 100:.0f}%), at a verify pass of "
                    f"{g['tree'] + 1} tokens instead of {g['block_size']}: {g['tokens_per_cycle'] / 2:.2f}x where a pass "
                    "costs about one step.\n" for g in trees) +
          f"auto: {auto['speedup']:.2f}x AR, {auto['ar_steps']} of {auto['tokens']} tokens as plain AR steps "
          f"(it runs Orthrus cycles only where the measured costs say they pay).\n"
          f"Orthrus output identical to AR in every mode on every prompt: "
          f"{'yes' if summary['all_identical'] else 'NO'}", file=sys.stderr)
    return 0 if summary["all_identical"] else 1
