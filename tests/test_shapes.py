"""The shape generator (pyorthrus.bench.shapes) and `pyorthrus bench --shape` on a tiny shape: a loadable merged Orthrus
GGUF with the real Qwen3 tokenizer, quantized by llama_model_quantize, greedy Orthrus == AR on it, and a report."""
from __future__ import annotations

import json
import math

import pytest

from pyorthrus import cli, options
from pyorthrus.bench import shapes
from pyorthrus.errors import PyorthrusError
from pyorthrus.model import Orthrus
from pyorthrus.pass_costs import monotone as _monotone, not_monotone as _not_monotone


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-llama3", "tiny-qwen35", "tiny-qwen35moe"])
def test_tiny_shape_loads_decodes_and_matches_ar(cache, name):
    """Qwen3 (the real Qwen3 tokenizer), Llama 3 (SmolLM2's tokenizer padded to 128,256 tokens) and Qwen3.5 (dense
    and MoE, the real Qwen3.5 vocabulary) shapes."""
    path = shapes.make_shape_gguf(name, "q8_0", cache, threads=2, progress=False)
    assert path.is_file() and not list(cache.glob("*.tmp"))
    assert shapes.make_shape_gguf(name, "q8_0", cache) == path  # cached: made once
    with Orthrus(path, block_size=8, n_ctx=256, n_threads=2) as llm:
        assert llm.trained_block_size == shapes.BLOCK_SIZE
        assert llm.llm.n_vocab() == shapes.SHAPES[name].vocab
        prompt = llm.tokenize("Hello, tokenizer!")
        assert 3 < len(prompt) < 20  # real BPE merges; a byte-level fallback would not
        out = llm.generate(prompt, max_tokens=24, block_size=8)
        ar = llm.ar_view().generate(prompt, max_tokens=24)
        assert out.tokens == ar.tokens


def test_unknown_shape_and_type_are_clean_errors(cache):
    with pytest.raises(PyorthrusError, match="unknown shape"):
        shapes.make_shape_gguf("qwen9-1t", "q8_0", cache)
    with pytest.raises(PyorthrusError, match="unknown weight type"):
        shapes.make_shape_gguf("tiny-qwen3", "q3_xs", cache)


def test_room_check_refuses_before_writing(cache, monkeypatch):
    # both checks are driven here, so the answer does not depend on this machine's disk or RAM
    monkeypatch.setattr(shapes, "_free_disk", lambda path: 1 << 30)
    monkeypatch.setattr(options, "available_memory", lambda: 1 << 40)
    with pytest.raises(PyorthrusError, match=r"shape qwen3-8b \(q8_0\) needs .* GiB of disk, 1.0 GiB free"):
        shapes.make_shape_gguf("qwen3-8b", "q8_0", cache)
    monkeypatch.setattr(shapes, "_free_disk", lambda path: 1 << 40)
    monkeypatch.setattr(options, "available_memory", lambda: 1 << 30)
    with pytest.raises(PyorthrusError, match=r"qwen3-8b: timing it warm needs .* GiB of RAM"):
        shapes.make_shape_gguf("qwen3-8b", "q8_0", cache)
    assert not list(cache.glob("qwen3-8b*"))


def test_shape_sizes_are_the_published_ones():
    # Qwen3-1.7B / 8B: 28 / 36 layers; the merged file adds 6 diff tensors per layer (docs/design.md, "Files")
    assert len(shapes.SHAPES["qwen3-1.7b"].tensors()) == 478
    assert len(shapes.SHAPES["qwen3-8b"].tensors()) == 615
    assert round(shapes.SHAPES["qwen3-8b"].n_params / 1e9, 1) == 9.7
    # Qwen3.5-4B / Qwen3.6-27B (24 + 8 / 48 + 16 layers): 4.2 / 26.9 billion AR parameters, 5.5 / 34.1 with twins
    for name, ar, merged in (("qwen3.5-4b", 4.2, 5.5), ("qwen3.6-27b", 26.9, 34.1)):
        shape = shapes.SHAPES[name]
        assert round(sum(math.prod(dims) for _, dims in shape.ar_tensors()) / 1e9, 1) == ar
        assert round(shape.n_params / 1e9, 1) == merged


def test_profile_curve_repair():
    assert _not_monotone({1: 1.0, 2: 2.0, 4: 1.2, 8: 5.0}) == [4]
    assert _not_monotone({1: 1.0, 2: 0.95}) == []  # within the tolerance
    assert _monotone({1: 1.0, 2: 2.0, 4: 1.2, 8: 5.0}) == {1: 1.0, 2: 2.0, 4: 2.0, 8: 5.0}


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-qwen35"])
def test_bench_shape_cli_writes_a_report(cache, tmp_path, capsys, name):
    """A hybrid shape too: its passes and cycles are measured with the state snapshots a cycle needs."""
    out = tmp_path / "shapes"
    assert cli.main(["bench", "--shape", name, "--weights", "q8_0", "--prefixes", "16", "-t", "2",
                     "--profile-reps", "1", "--shape-cache", str(cache), "--out", str(out)]) == 0
    report = json.loads(out.with_name(out.name + ".json").read_text())
    assert report["label"] == "random weights: timing only"
    run = report["results"][0]["runs"][0]
    assert run["prefix_tokens"] == 16
    for k, row in run["per_k"].items():
        assert row["break_even_tokens_per_cycle"] == pytest.approx(row["t_cycle_s"] / run["t_step_s"])
        assert row["t_cycle_s"] > 0
    assert "random weights: timing only" in out.with_name(out.name + ".md").read_text()
