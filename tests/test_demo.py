"""`pyorthrus demo` (the README's main command) end to end: SmolLM2 + the shipped adapter, AR vs auto vs fixed K."""
from __future__ import annotations

import json

from pytest import approx

from pyorthrus import cli


def test_demo_answers_right_matches_ar_and_explains_the_speed(capsys):
    assert cli.main(["demo", "-n", "12", "-t", "2", "-k", "4,8,4t8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"].endswith("smollm2-135m-orthrus-k16.q8_0.gguf")
    assert report["system_prompt"] == "You are a helpful assistant."
    first = report["prompts"][0]
    assert "capital of France" in first["prompt"] and "Paris" in first["text"]
    summary = report["summary"]
    assert summary["all_identical"]
    for row in report["prompts"]:
        assert set(row["modes"]) == {"ar", "auto", "k4", "k8", "k4t8"}
        for mode in row["modes"].values():
            assert mode["identical"] and 0 < mode["tokens"] <= 12
    assert summary["modes"]["k4"]["tokens_per_cycle"] > 1.0  # the trained adapter's drafts are accepted
    tree, = summary["trees"]  # the tree of 8 at K=4 set against the chain at K=4
    assert tree["mode"] == "4t8" and tree["chain_tokens_per_cycle"] == summary["modes"]["k4"]["tokens_per_cycle"]
    assert tree["tokens_per_cycle"] == summary["modes"]["k4t8"]["tokens_per_cycle"]
    limits = summary["limits"]
    assert limits["block_size"] == summary["best_fixed_block_size"] in (4, 8)
    # the break-even acceptance is the cycle's cost in AR steps, read from the measured pass costs
    costs = summary["pass_costs"]
    assert limits["t_step_ms"] == costs["t_step_s"] * 1e3
    assert limits["cycle_steps"] == approx(limits["draft_pass_steps"] + limits["verify_pass_steps"])
    assert limits["cycle_steps"] > 1.0
    assert limits["predicted_speedup"] == limits["tokens_per_cycle"] / limits["break_even_tokens_per_cycle"]
