"""block_size="auto" and `pyorthrus bench` on the real build, SmolLM2 Q4_1 and the shipped adapter. No timing is
asserted here: speed goals live in bench/ and its reports."""
from __future__ import annotations

import itertools
import json

import pytest
from pytest import approx

from pyorthrus import Orthrus, PyorthrusError, assets, cli
from pyorthrus.auto import FIRST_PROBE_GAP, AutoBlockSize
from pyorthrus.cli_options import block_size_argument
from pyorthrus.pass_costs import PassCosts, auto_sizes

PROMPTS = [
    "The three primary colours are",
    "def fibonacci(n):\n",
]


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Orthrus(smollm2_path, assets.default_adapter(), block_size="auto", n_ctx=512, n_threads=2) as llm:
        yield llm


def _assert_accounts_for_every_token(stats, trained_k: int) -> None:
    assert stats.n_cycles == len(stats.cycles) == sum(stats.accepted.values())
    assert sum(n for _, n in stats.cycles) + stats.n_ar_steps == stats.n_generated
    assert all(2 <= k <= trained_k and 1 <= n <= k for k, n in stats.cycles)
    histogram = stats.as_dict()["block_size_histogram"]
    assert sum(histogram.values()) == stats.n_cycles


@pytest.mark.parametrize("prompt", PROMPTS)
def test_auto_greedy_equals_ar_and_accounts_for_every_token(model, prompt):
    expected = model.ar_view().generate(prompt, max_tokens=40)
    got = model.generate(prompt, max_tokens=40)
    assert got.tokens == expected.tokens
    assert got.stats.block_size == "auto"
    assert model.auto_controller is not None  # the pass costs were measured on first use, once
    _assert_accounts_for_every_token(got.stats, model.trained_block_size)


class _ScriptedChoices:
    """Stands in for the auto controller: a fixed, repeating sequence of AR steps (1) and cycles at several K,
    every other cycle fused, the others verifying a tree of 8 nodes where K >= 4."""

    def __init__(self, choices):
        self._choices = itertools.cycle(choices)
        self.next_fused = False
        self.next_tree = 0
        self.trees_seen = 0

    def choose(self, limit: int) -> int:
        k = min(next(self._choices), max(2, limit))
        self.next_fused = not self.next_fused
        self.next_tree = 0 if self.next_fused or k < 4 else 8
        return k

    def observe_cycle(self, block_size, n_accepted, seconds, fused=False, carried=False, tree=0) -> None:
        self.trees_seen += tree > 0

    def observe_step(self, seconds) -> None:
        pass

    def cost_note(self) -> str:
        return "scripted choices"


def test_ar_steps_and_cycles_interleave_without_breaking_the_cache(model):
    learned = model.auto_controller
    model.auto_controller = _ScriptedChoices([1, 4, 1, 1, 16, 2, 1, 8, 3])
    try:
        for prompt in PROMPTS:
            got = model.generate(prompt, max_tokens=32)
            assert got.tokens == model.ar_view().generate(prompt, max_tokens=32).tokens
            assert got.stats.n_ar_steps > 0 and got.stats.n_cycles > 0
            _assert_accounts_for_every_token(got.stats, model.trained_block_size)
        assert model.auto_controller.trees_seen > 0  # tree cycles ran between the others
    finally:
        model.auto_controller = learned


def test_block_size_is_checked_per_call_and_on_the_command_line(model):
    with pytest.raises(PyorthrusError, match="integer K or 'auto'"):
        model.generate("hello", max_tokens=4, block_size="fast")
    with pytest.raises(PyorthrusError, match=r"must be in 2 \.\.\. "):
        model.generate("hello", max_tokens=4, block_size=model.trained_block_size + 1)
    assert model.generate("hello", max_tokens=4, block_size=4).stats.block_size == 4
    assert block_size_argument("auto") == "auto" and block_size_argument("8") == 8


def _costs(step_s: float, pass_s, **sizes) -> PassCosts:
    """Synthetic pass costs: step_s for an AR step, pass_s(K) seconds for a K-token pass in either view, at the
    sizes auto_sizes gives for K = 16 with `sizes` (fused, largest_pass)."""
    ks = auto_sizes(16, **sizes)
    return PassCosts(128, {k: step_s if k == 1 else pass_s(k) for k in ks}, {k: pass_s(k) for k in ks if k > 1})


def _simulate(controller: AutoBlockSize, rounds: int, pass_s, accepted, tree_accepted=None,
              guess_right: bool = False) -> list[tuple[int, bool, int]]:
    """Drive the controller as the decode loop does, on a device where an AR step truly costs pass_s(1) and a
    K-token pass pass_s(K): a chain cycle costs two K-token passes and accepts accepted(K) drafts; a fused cycle
    costs its 2K-token pass, plus its draft pass unless the previous cycle (fused, same K, every draft accepted,
    guess_right) carried its draft over; a tree cycle of budget B costs a K-token draft and a (B+1)-token verify and
    accepts tree_accepted(B). The choices (K, fused, tree), in order."""
    choices, carry = [], None
    for _ in range(rounds):
        k = controller.choose(1000)
        fused, tree = controller.next_fused, controller.next_tree
        choices.append((k, fused, tree))
        carried, carry = fused and carry == k, None
        if k == 1:
            controller.observe_step(pass_s(1))
        elif tree:
            controller.observe_cycle(k, tree_accepted(tree), pass_s(k) + pass_s(tree + 1), tree=tree)
        elif fused:
            n = accepted(k)
            controller.observe_cycle(k, n, pass_s(2 * k) + (0 if carried else pass_s(k)), fused, carried)
            carry = k if n == k - 1 and guess_right else None
        else:
            controller.observe_cycle(k, accepted(k), 2 * pass_s(k))
    return choices


def _blocks(choices) -> list[int]:
    return [k for k, _, _ in choices]


def _cpu_like_pass(k: int) -> float:
    return 0.01 * (1 + k / 3)


def _gpu_like_pass(k: int) -> float:
    return 0.01 * (1 + k / 64)


def _step_then(pass_s, step_s: float = 0.01):
    """pass_s with a true AR step of step_s."""
    return lambda k: step_s if k == 1 else pass_s(k)


def test_controller_runs_ar_where_passes_are_expensive_and_probes_rarely():
    choices = _blocks(_simulate(AutoBlockSize(_costs(0.01, _cpu_like_pass), 16), 400, _step_then(_cpu_like_pass),
                                lambda k: 0))
    probes = [i for i, k in enumerate(choices) if k > 1]
    assert probes[0] == 0  # no statistics yet: the first round probes
    assert all(later - earlier > FIRST_PROBE_GAP for earlier, later in zip(probes, probes[1:]))
    assert len(probes) <= 4


def test_controller_runs_large_blocks_where_passes_are_cheap():
    controller = AutoBlockSize(_costs(0.01, _gpu_like_pass), 16)
    choices = _blocks(_simulate(controller, 300, _step_then(_gpu_like_pass), lambda k: k - 1))  # all accepted
    assert choices[-100:].count(16) >= 95 and set(choices[-100:]) <= {1, 16}  # AR steps only as rare probes
    assert 1 in choices[-200:]
    assert controller.expected_tokens()[-1] > 10
    # near max_tokens a block longer than the tokens still wanted would only cost more
    assert controller.choose(5) == 5 and controller.choose(1) == 1


def test_controller_corrects_a_profile_that_overstates_the_ar_step():
    # profiled on a busy moment: the step looked 5x slower than it is, so Orthrus looks better than it is
    controller = AutoBlockSize(_costs(0.05, _cpu_like_pass), 16)
    choices = _blocks(_simulate(controller, 400, _step_then(_cpu_like_pass), lambda k: 0))
    assert choices[0] == 1  # Orthrus looks better, but AR steps were never observed: one is probed at once
    assert choices[-100:].count(1) >= 95


def test_controller_never_probes_where_even_full_acceptance_loses():
    controller = AutoBlockSize(_costs(0.01, lambda k: 0.01 * k), 16)  # a K-token pass costs K steps
    assert all(controller.choose(1000) == 1 for _ in range(100))


def test_controller_fuses_where_a_2k_pass_costs_about_a_k_pass():
    controller = AutoBlockSize(_costs(0.01, _gpu_like_pass, fused=True), 16, fused=True)
    choices = _simulate(controller, 300, _step_then(_gpu_like_pass), lambda k: k - 1, guess_right=True)
    assert [(k, fused) for k, fused, _ in choices[-100:]].count((16, True)) >= 95
    assert controller.guess_rate() > 0.9


def test_controller_does_not_fuse_where_a_2k_pass_costs_two_k_passes():
    controller = AutoBlockSize(_costs(0.01, lambda k: 0.01 * (1 + k), fused=True), 16, fused=True)
    choices = _simulate(controller, 200, lambda k: 0.01 * (1 + k), lambda k: k - 1, guess_right=True)
    assert not any(fused for k, fused, _ in choices if k > 1)


def test_controller_stops_fusing_when_the_guess_keeps_failing():
    controller = AutoBlockSize(_costs(0.01, _gpu_like_pass, fused=True), 16, fused=True)
    choices = _simulate(controller, 300, _step_then(_gpu_like_pass), lambda k: k - 1, guess_right=False)
    assert any(fused for _, fused, _ in choices[:100])  # once drafts are seen to be accepted, fusing looks good
    assert not any(fused for k, fused, _ in choices[-100:] if k > 1)
    assert controller.guess_rate() < 0.2


def test_controller_verifies_trees_where_a_longer_verify_pass_is_cheap():
    controller = AutoBlockSize(_costs(0.01, _gpu_like_pass, largest_pass=33), 16, trees=(8, 16, 32))
    choices = _simulate(controller, 300, _step_then(_gpu_like_pass), lambda k: min(2, k - 1),
                        tree_accepted=lambda b: {8: 3, 16: 4, 32: 5}[b])
    assert [(k, tree) for k, _, tree in choices[-100:]].count((16, 32)) >= 95  # the budget that commits most/s
    assert controller.as_dict()["trees"][32]["expected_tokens"] > 5.5


def test_controller_keeps_chains_where_trees_commit_no_more():
    controller = AutoBlockSize(_costs(0.01, _gpu_like_pass, largest_pass=33), 16, trees=(8, 16, 32))
    choices = _simulate(controller, 300, _step_then(_gpu_like_pass), lambda k: min(3, k - 1),
                        tree_accepted=lambda b: 1)
    assert any(tree for _, _, tree in choices[:50])  # the optimistic prior tries the trees
    assert not any(tree for _, _, tree in choices[-100:])  # and their committing less is learned


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    assert cli.main(["bench", "--n-prompts", "1", "-n", "16", "--block-sizes", "4,4f,auto", "--no-peer", "-t", "2",
                     "--profile-reps", "1", "--out", str(out)]) == 0
    return out


def test_bench_writes_the_new_fields(bench_run):
    report = json.loads(bench_run.with_suffix(".json").read_text())
    summary, row = report["summary"], report["rows"][0]
    assert report["block_sizes"] == [4, "4f", "auto"]
    for key in ("orthrus_k4", "orthrus_k4_fused", "orthrus_auto"):
        entry = summary[key]
        for field in ("predicted_speedup", "measured_over_predicted", "loop_overhead_share", "first_token_s_median",
                      "kv_bytes_per_cell", "ar_step_share", "block_size_histogram", "accepted_histogram"):
            assert field in entry, (key, field)
        assert row[key]["identical"]
        # one cache for both views: an identical Orthrus run leaves exactly the AR run's cells and bytes
        assert (row[key]["kv_cells"], row[key]["kv_bytes"]) == (row["ar"]["kv_cells"], row["ar"]["kv_bytes"]) > (0, 0)
        assert row[key]["t_first_token_s"] > 0
    assert summary["orthrus_k4"]["block_size_histogram"] == {"4": row["orthrus_k4"]["cycles"]}
    assert row["ar"]["t_first_token_s"] > 0
    assert "pass_costs" in report["auto_state"]
    text = bench_run.with_suffix(".md").read_text()
    assert "| Orthrus auto |" in text and "| Orthrus K=4 |" in text and "KV cache" in text
    # fused and unfused K=4 side by side: the same tokens; a fused cycle runs 2 passes, or 1 when its draft was
    # carried over from the previous cycle's fused pass
    fused, plain = summary["orthrus_k4_fused"], summary["orthrus_k4"]
    assert row["orthrus_k4_fused"]["identical"] and "carried_share" not in plain
    assert fused["passes_per_cycle"] == approx(2 - fused["carried_share"])
    assert "| Orthrus K=4 fused |" in text and "Fused cycles" in text


def test_bench_plots(bench_run):
    pytest.importorskip("matplotlib")
    for name in ("tok_s", "speedup", "acceptance", "pass_cost"):
        png = bench_run.with_name(f"run_{name}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"({png.name})" in bench_run.with_suffix(".md").read_text()


def test_plots_are_skipped_with_a_note_without_matplotlib(bench_run, monkeypatch, capsys, tmp_path):
    from pyorthrus.bench import report as bench_report

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # makes `import matplotlib` fail
    report = json.loads(bench_run.with_suffix(".json").read_text())
    assert bench_report.plot(report, tmp_path / "x") is None
    assert "pip install 'pyorthrus[bench]'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_bench_compare_renders_a_cross_device_table(bench_run, tmp_path, capsys):
    report = json.loads(bench_run.with_suffix(".json").read_text())
    other = dict(report, device={**report["device"], "accelerators": ["NVIDIA H100"], "n_gpu_layers": -1,
                                 "backend": "cuda"})
    (tmp_path / "gpu.json").write_text(json.dumps(other))
    assert cli.main(["bench", "compare", str(bench_run.with_suffix(".json")), str(tmp_path / "gpu.json"),
                     "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| run ") or line.startswith("| gpu ")]
    assert len(lines) == 2 and "NVIDIA H100" in lines[1] and "cuda" in lines[1]
    assert "| best K |" in table and "| auto speedup |" in table
    assert (tmp_path / "cmp.md").read_text().count("| gpu |") == 1


def test_bench_compare_refuses_a_file_that_is_not_a_report(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert cli.main(["bench", "compare", str(tmp_path / "x.json")]) == 1
    assert "not a `pyorthrus bench --out` report" in capsys.readouterr().err
