"""`pyorthrus check` on the real build: 100% trajectory match where it must, a clear report where it breaks."""
from __future__ import annotations

import json
import subprocess
import sys

import llama_cpp
import pytest

from pyorthrus import Orthrus, check, prompts

from orthrus_adapters import write_identity_adapter


@pytest.fixture(scope="module")
def smollm2_f16(tmp_path_factory, smollm2_path):
    """SmolLM2 requantized to F16 with llama.cpp's own quantizer (the Q4_1 values, stored as F16)."""
    out = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(smollm2_path).encode(), str(out).encode(), params) == 0
    return out


@pytest.mark.parametrize("base", ["q4_1", "f16"])
def test_check_reports_full_trajectory_match(base, smollm2_path, smollm2_f16, tmp_path):
    model = smollm2_path if base == "q4_1" else smollm2_f16
    adapter = write_identity_adapter(model, tmp_path / "adapter.gguf", block_size=16)
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "check", "-m", str(model), "-a", str(adapter),
                             "-k", "8", "--limit", "3", "-n", "32", "-t", "2", "-c", "512", "--json"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["passed"] is True
    assert report["summary"]["exact_match_rate"] == 1.0
    assert report["summary"]["prompts"] == 3
    for row in report["prompts"]:
        assert row["identical"] and row["divergence"] is None
        assert row["n_ar"] == row["n_orthrus"] == row["matched_prefix"] > 0


def test_perturbed_decoding_fails_with_a_clear_report(smollm2_path, tmp_path):
    adapter = write_identity_adapter(smollm2_path, tmp_path / "adapter.gguf", block_size=16)
    with Orthrus(smollm2_path, adapter, block_size=8, n_ctx=512, n_threads=2) as model:
        model._perturb_at = 5  # test-only hook: the 6th generated token is replaced after verification
        rows = [check.compare(model, model.ar_view(), p, max_tokens=24, chat=True) for p in prompts.load("mix", 2)]
    summary = check.summarize(rows)
    assert summary["exact_match_rate"] == 0.0
    for row in rows:
        assert not row.identical and row.matched_prefix == 5
        d = row.divergence
        assert d["position"] == 5 and d["ar_token"] != d["orthrus_token"]
        assert d["ar_logit_margin"] > 0  # AR picked the argmax, so the perturbed token scores lower


def test_bad_prompt_file_is_a_one_line_error(smollm2_path, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "check", "--prompts", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pyorthrus check: error: {bad}:2: expected a JSON object with a \"prompt\" string"]
