"""`pyorthrus check` on the real build: 100% trajectory match where it must, a clear report where it breaks; the
task accuracies, the FP32 reference comparison and the sampling test, each end to end through the CLI."""
from __future__ import annotations

import json
import math
import sys

import llama_cpp
import pytest

from pyorthrus import Orthrus, assets, cli, prompts
from pyorthrus.check import cli as check
from pyorthrus.check import sampling as check_sampling
from pyorthrus.check import stats as check_stats
from pyorthrus.check import tasks as check_tasks

from pyorthrus.testing.adapters import write_identity_adapter

ADAPTER = str(assets.DEFAULT_ADAPTER)
# One thread for everything: the 2 CPU cores are shared, and llama.cpp's spinning threads crawl when oversubscribed.
ONE_THREAD = ["-t", "1"]


def run_check(capsys, *argv: str) -> tuple[int, dict]:
    code = cli.main(["check", *argv, *ONE_THREAD, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


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
def test_check_reports_full_trajectory_match(base, smollm2_path, smollm2_f16, tmp_path, capsys):
    model = smollm2_path if base == "q4_1" else smollm2_f16
    adapter = write_identity_adapter(model, tmp_path / "adapter.gguf", block_size=16)
    code, report = run_check(capsys, "-m", str(model), "-a", str(adapter), "-k", "8", "--limit", "3", "-n", "32",
                             "-c", "512")
    assert code == 0
    assert set(report) == {"summary", "prompts"}  # without the new flags, the report of old
    assert report["summary"]["passed"] is True
    assert report["summary"]["exact_match_rate"] == 1.0
    assert report["summary"]["prompts"] == 3
    for row in report["prompts"]:
        assert row["identical"] and row["divergence"] is None
        assert row["n_ar"] == row["n_orthrus"] == row["matched_prefix"] > 0


def test_perturbed_decoding_fails_with_a_clear_report(smollm2_path, tmp_path):
    adapter = write_identity_adapter(smollm2_path, tmp_path / "adapter.gguf", block_size=16)
    with Orthrus(smollm2_path, adapter, block_size=8, n_ctx=512, n_threads=1, n_threads_batch=1) as model:
        verified_cycle = model.engine.cycle

        def perturbed_cycle(last, block_size, params, out, n_max, counters, stats):
            """The cycle, then the 6th generated token replaced after verification (as a decoding bug would)."""
            tokens, stopped = verified_cycle(last, block_size, params, out, n_max, counters, stats)
            i = 5 - stats.n_generated  # stats.n_generated: the tokens of earlier rounds
            if 0 <= i < len(tokens):
                tokens[i] = (tokens[i] + 1) % model.llm.n_vocab()
            return tokens, stopped

        model.engine.cycle = perturbed_cycle
        rows = [check.compare(model, model.ar_view(), p, max_tokens=24, chat=True) for p in prompts.load("mix", 2)]
    summary = check.summarize(rows)
    assert summary["exact_match_rate"] == 0.0
    for row in rows:
        assert not row.identical and row.matched_prefix == 5
        d = row.divergence
        assert d["position"] == 5 and d["ar_token"] != d["orthrus_token"]
        assert d["ar_logit_margin"] > 0  # AR picked the argmax, so the perturbed token scores lower


def test_bad_prompt_file_is_a_one_line_error(tmp_path):
    import subprocess

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "check", "--prompts", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pyorthrus check: error: {bad}:2: expected a JSON object with a \"prompt\" string"]


# -- --task ------------------------------------------------------------------------------------------------------

def test_gsm8k_accuracy_of_ar_and_orthrus_is_identical(capsys):
    code, report = run_check(capsys, "-a", ADAPTER, "-k", "8", "--task", "gsm8k", "--limit", "3", "-n", "64")
    assert code == 0 and report["summary"]["exact_match_rate"] == 1.0
    task = report["task"]
    s = task["summary"]
    assert s["task"] == "gsm8k" and s["problems"] == 3
    assert s["ar"] == s["orthrus"]  # identical outputs, identical scores
    assert 0.0 <= s["ar"]["ci95"][0] <= s["ar"]["accuracy"] <= s["ar"]["ci95"][1] <= 1.0
    assert s["orthrus_minus_ar"]["difference"] == 0.0 and s["orthrus_minus_ar"]["ci95"] == [0.0, 0.0]
    expected = [p["answer"] for p in prompts.load("gsm8k", 3)]
    assert [row["task_id"] for row in task["problems"]] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert [row["expected"] for row in task["problems"]] == expected
    for row in task["problems"]:
        assert row["ar"] == row["orthrus"]


def test_humaneval_pass_at_1_runs_the_harness_in_a_child(capsys):
    code, report = run_check(capsys, "-a", ADAPTER, "-k", "8", "--task", "humaneval", "--limit", "2", "-n", "64",
                             "-c", "1024")
    assert code == 0
    s = report["task"]["summary"]
    assert s["task"] == "humaneval" and s["problems"] == 2 and s["ar"] == s["orthrus"]
    assert s["orthrus_minus_ar"]["discordant_pairs"] == 0
    for row in report["task"]["problems"]:
        assert row["ar"]["result"] == "passed" or row["ar"]["result"].startswith(("failed", "timed out"))
        assert row["ar"]["completion"].strip()


@pytest.fixture(scope="module")
def humaneval_first():
    return check_tasks.load_problems("humaneval", 1)[0]["problem"]


def test_harness_passes_the_canonical_solution_and_fails_a_wrong_one(humaneval_first):
    assert check_tasks.run_harness(humaneval_first, humaneval_first["canonical_solution"]) == "passed"
    assert check_tasks.run_harness(humaneval_first, "    return None\n").startswith("failed")


@pytest.mark.parametrize("body", ["    while True:\n        pass\n",  # interrupted by the harness's alarm
                                  "    return sum(range(10 ** 13)) > 0\n"],  # stuck in C: killed from outside
                         ids=["python-loop", "c-loop"])
def test_harness_reports_an_endless_completion_as_timed_out(humaneval_first, body):
    assert check_tasks.run_harness(humaneval_first, body, timeout_s=0.5) == "timed out"


def test_harness_fails_a_huge_allocation_cleanly(humaneval_first):
    verdict = check_tasks.run_harness(humaneval_first, "    hoard = bytearray(1 << 40)\n    return True\n")
    assert verdict.startswith("failed")


def test_answer_extraction():
    assert check_tasks.final_number("so 3 + 4 = 7 apples, total $1,250.50.") == "1250.5"
    assert check_tasks.final_number("It is -12.") == "-12"
    assert check_tasks.final_number("no digits") is None
    problem = {"entry_point": "add"}
    reply = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert check_tasks.humaneval_completion(reply, problem) == "\ndef add(a, b):\n    return a + b\n"
    assert check_tasks.humaneval_completion("    return a + b\n", problem) == "    return a + b\n"


# -- --reference ---------------------------------------------------------------------------------------------

def test_reference_against_the_dequantized_gguf(capsys):
    pytest.importorskip("torch")
    code, report = run_check(capsys, "-a", ADAPTER, "-k", "8", "--reference", "--limit", "2", "-n", "12")
    assert code == 0
    ref = report["reference"]
    s = ref["summary"]
    assert s["prompts"] == 2 and "dequantized" in s["reference"]
    assert s["top1_agreement"] == 1.0
    assert math.isfinite(s["max_abs_logit_diff"]) and 0 < s["max_abs_logit_diff"] < 5
    assert 0 <= s["mean_kl"] <= s["max_kl"] < 0.1
    for row in ref["prompts"]:
        assert row["n_llama"] == 12 and 0 < row["matched_prefix"] <= 12
        assert row["identical"] == (row["divergence"] is None)


def test_reference_without_torch_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to find_spec
    assert cli.main(["check", "-a", ADAPTER, "--reference"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "pyorthrus check: error: --reference needs PyTorch: pip install 'pyorthrus[convert]' (or just torch)"]


def test_reference_dir_without_config_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["check", "-a", ADAPTER, "--reference", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pyorthrus check: error: {tmp_path}: not an HF checkpoint directory (no config.json)"]


# -- --sampling ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def colour_prompt(tmp_path_factory):
    """A short raw prompt whose next tokens spread over a few likely words: cheap runs, testable counts."""
    path = tmp_path_factory.mktemp("sampling") / "prompt.jsonl"
    path.write_text('{"prompt": "My favourite colour is"}\n')
    return path


def test_sampling_test_passes_for_orthrus(capsys, colour_prompt):
    code, report = run_check(capsys, "-a", ADAPTER, "-k", "4", "--prompts", str(colour_prompt), "--raw", "-n", "4",
                             "--sampling", "--seeds", "60", "--positions", "2", "--top-k", "4", "-c", "256")
    s = report["sampling"]
    assert s["runs_per_decoder"] == 60 and len(s["positions"]) == 2
    assert s["tested_positions"] >= 1  # top-k 4 keeps the counts testable at 60 runs
    assert s["bonferroni_threshold"] == pytest.approx(0.01 / s["tested_positions"])
    assert all(0.0 <= row["p_value"] <= 1.0 for row in s["positions"])
    assert s["passed"] and not s["rejected_positions"]
    assert code == 0 and report["summary"]["passed"] is True


def test_sampling_test_rejects_a_wrong_sampler(colour_prompt):
    """The test can fail: AR at temperature 1.0 against AR at 0.5 (a sampler off by its temperature)."""
    with Orthrus(assets.smollm2_gguf(), mode="ar", n_ctx=256, n_threads=1, n_threads_batch=1) as model:
        tokens = model.tokenize("My favourite colour is")
        runs = {temp: check_sampling.draw_runs(model, tokens, range(start, start + 60), 1,
                                               dict(temperature=temp, top_k=0, top_p=1.0, min_p=0.0))
                for temp, start in ((1.0, 0), (0.5, 60))}
    report = check_sampling.compare_runs(runs[1.0], runs[0.5], alpha=0.01)
    assert not report["passed"] and report["rejected_positions"] == [0]
    assert report["min_p_value"] < 1e-3


def test_sampling_without_temperature_is_a_one_line_error(capsys):
    assert cli.main(["check", "-a", ADAPTER, "--sampling", "--temp", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "pyorthrus check: error: --sampling needs a temperature above 0 (--temp)"]


# -- statistics ----------------------------------------------------------------------------------------------

def test_chi2_sf_matches_closed_forms():
    for x in (0.1, 1.0, 3.0, 10.0, 50.0, 200.0):
        assert check_stats.chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)  # df 2: exp(-x/2)
        assert check_stats.chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)
    assert check_stats.chi2_sf(0.0, 3) == 1.0


def test_homogeneity_pools_rare_tokens():
    same = check_stats.homogeneity_test([1] * 30 + [2] * 30 + list(range(100, 110)),
                                        [1] * 30 + [2] * 30 + list(range(200, 210)))
    assert same["distinct"] == 22 and same["categories"] == 3 and same["dof"] == 2  # 20 singletons, one pool
    assert same["statistic"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0)
    shifted = check_stats.homogeneity_test([1] * 50 + [2] * 10, [1] * 10 + [2] * 50)
    assert shifted["p_value"] < 1e-10


def test_intervals():
    assert check_stats.wilson_interval(0, 3) == [0.0, pytest.approx(0.5615, abs=1e-4)]
    low, high = check_stats.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    agree = check_stats.paired_difference([True, False, True], [True, False, True])
    assert agree["difference"] == 0.0 and agree["ci95"] == [0.0, 0.0]
    better = check_stats.paired_difference([False] * 4, [True] * 4)
    assert better["difference"] == 1.0 and 0 < better["ci95"][0] < 1.0 == better["ci95"][1]
