"""`pyorthrus check --sampling`: is Orthrus rejection sampling lossless on this model?

Lossless means the sequences Orthrus samples follow the AR model's distribution exactly (after the same temperature,
top-k, top-p and min-p). The test draws many short continuations of one prompt with each decoder, one seed per run,
and compares the token distributions at every position with a chi-square homogeneity test; with a Bonferroni
correction over the positions tested, the family-wise false-alarm rate stays at alpha.
"""
from __future__ import annotations

import sys
from typing import Sequence

from tqdm import tqdm

from .stats import homogeneity_test
from ..errors import PyorthrusError

ENDED = -1  # what a run holds at the positions after it stopped (end of generation): a category of its own


def draw_runs(model, prompt_tokens: Sequence[int], seeds: Sequence[int], positions: int, sampling: dict,
              progress: bool = False, label: str = "") -> list[list[int]]:
    """One sampled continuation of `positions` tokens per seed (padded with ENDED after an early stop)."""
    runs = []
    for seed in tqdm(seeds, desc=label, unit="run", disable=not progress, file=sys.stderr):
        model.seed = seed  # generate() seeds its sampler (AR or Orthrus) from the instance
        tokens = model.generate(list(prompt_tokens), max_tokens=positions, **sampling).tokens
        runs.append(tokens + [ENDED] * (positions - len(tokens)))
    return runs


def compare_runs(runs_first: list[list[int]], runs_second: list[list[int]], alpha: float) -> dict:
    """Position by position homogeneity tests; the whole test rejects when any p-value falls below alpha divided
    by the number of positions that had something to test. With none (every token too rare to test), nothing is
    rejected but nothing is shown either: "tested_positions" is 0 and the report says so."""
    positions = min(len(r) for r in runs_first + runs_second)
    rows = [{"position": j, **homogeneity_test([r[j] for r in runs_first], [r[j] for r in runs_second])}
            for j in range(positions)]
    tested = [row for row in rows if row["dof"] > 0]
    threshold = alpha / max(1, len(tested))
    rejected = [row["position"] for row in tested if row["p_value"] < threshold]
    return {"alpha": alpha, "tested_positions": len(tested), "bonferroni_threshold": threshold,
            "min_p_value": min((row["p_value"] for row in tested), default=1.0), "rejected_positions": rejected,
            "passed": not rejected, "positions": rows}


def validate(sampling: dict, n_seeds: int, positions: int, alpha: float) -> None:
    """Fail before any decoding."""
    if sampling["temperature"] <= 0:
        raise PyorthrusError("--sampling needs a temperature above 0 (--temp)")
    if n_seeds < 2 or positions < 1 or not 0 < alpha < 1:
        raise PyorthrusError("--sampling needs --seeds >= 2, --positions >= 1 and 0 < --alpha < 1")


def run(orthrus, ar, prompt_tokens: list[int], n_seeds: int, positions: int, sampling: dict, alpha: float,
        seed: int, progress: bool) -> dict:
    """AR runs use seeds seed ... seed+N-1 and Orthrus runs the next N: the two samples must be independent."""
    ar_runs = draw_runs(ar, prompt_tokens, range(seed, seed + n_seeds), positions, sampling, progress, "sample AR")
    orthrus_runs = draw_runs(orthrus, prompt_tokens, range(seed + n_seeds, seed + 2 * n_seeds), positions, sampling,
                             progress, "sample Orthrus")
    return {"runs_per_decoder": n_seeds, "sampling": sampling, **compare_runs(ar_runs, orthrus_runs, alpha)}


def print_report(report: dict) -> None:
    print(f"\nsampling: {report['runs_per_decoder']} AR and {report['runs_per_decoder']} Orthrus runs, "
          + ", ".join(f"{k} {v}" for k, v in report["sampling"].items()))
    print(f"{'pos':>3} {'distinct':>8} {'cats':>4} {'chi2':>9} {'df':>3} {'p-value':>9}")
    for row in report["positions"]:
        print(f"{row['position']:>3} {row['distinct']:>8} {row['categories']:>4} {row['statistic']:>9.2f} "
              f"{row['dof']:>3} {row['p_value']:>9.3g}")
    if not report["tested_positions"]:
        print("nothing tested: at no position did two tokens (or pools of rare ones) occur 10 times; raise --seeds, "
              "or lower --temp or --top-k")
        return
    verdict = ("PASS: no position rejects" if report["passed"]
               else f"FAIL: positions {report['rejected_positions']} reject")
    print(f"min p-value {report['min_p_value']:.3g} vs alpha {report['alpha']} / {report['tested_positions']} "
          f"positions = {report['bonferroni_threshold']:.3g}: {verdict}")
