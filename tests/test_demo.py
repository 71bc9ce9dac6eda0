"""`pyorthrus demo` (the README's main command) end to end: SmolLM2 + the shipped adapter, AR vs Orthrus."""
from __future__ import annotations

import json

from pyorthrus import cli


def test_demo_runs_the_embedded_default_and_matches_ar(capsys):
    assert cli.main(["demo", "-n", "12", "-t", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"].endswith("smollm2-135m-orthrus-k16.q8_0.gguf")
    assert report["summary"]["all_identical"]
    for row in report["prompts"]:
        assert row["identical"] and 0 < row["tokens"] <= 12 and row["text"]
        assert row["tokens_per_cycle"] > 1.0  # the trained adapter's drafts are accepted
