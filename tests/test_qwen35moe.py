"""Orthrus on a Qwen3.5/3.6 MoE base (issue 37, patch 0025) as an adapter file beside the plain base: a tiny random
`qwen35moe` (three Gated DeltaNet layers and a gated attention layer, each followed by 4 routed experts (2 used) and
a gated shared expert, the real Qwen3.5 vocabulary). Its diffusion view is the dense qwen35's (the experts stay
shared); the merged file's cycles are tests/test_qwen35_orthrus.py's. And the draft scheme key (patch 0026)."""
from __future__ import annotations

import llama_cpp
import pytest

from pyorthrus import Orthrus, PyorthrusError, cli
from pyorthrus.bench.shapes import SHAPES, quantize_gguf
from pyorthrus.testing.qwen35 import write_tiny_qwen35, write_tiny_qwen35_adapter

MOE = SHAPES["tiny-qwen35moe"]
TRAINED_K = 8
PROMPTS = ["The capital of France is", "def fibonacci(n):\n"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The merged file (twins equal to their AR layers: about 1.8 tokens per cycle), the plain base of the same
    seed, the adapter file of the merged one's twins, and the base quantized to Q8_0."""
    out = tmp_path_factory.mktemp("qwen35moe")
    merged = write_tiny_qwen35(out / "merged.gguf", config=MOE, block_size=TRAINED_K, twin_noise=0.0)
    base = write_tiny_qwen35(out / "base.gguf", config=MOE)
    return {"merged": merged, "base": base, "adapter": write_tiny_qwen35_adapter(merged, out / "adapter.gguf"),
            "base_q8_0": quantize_gguf(base, out / "base.q8_0.gguf", "q8_0", threads=2)}


def test_an_adapter_file_beside_the_plain_base(files, capsys):
    """The twins as an adapter file on the plain base: the merged file's tokens and cycles on F32, AR's tokens on
    Q8_0; `inspect` sees that it fits and how many snapshots it costs."""
    assert cli.main(["inspect", str(files["base"]), str(files["adapter"])]) == 0
    report = capsys.readouterr().out
    assert "the adapter fits this base" in report and "qwen35moe" in report
    assert cli.main(["inspect", str(files["adapter"])]) == 0
    assert "draft scheme:  causal_twin (recurrent layers)" in capsys.readouterr().out
    with Orthrus(files["merged"], n_ctx=512) as merged, \
            Orthrus(files["base"], files["adapter"], n_ctx=512) as adapter:
        assert llama_cpp.llama_n_rs_seq(adapter.ctx) == TRAINED_K
        for prompt in PROMPTS:
            want, got = merged.generate(prompt, max_tokens=32, block_size=4), \
                adapter.generate(prompt, max_tokens=32, block_size=4)
            assert got.tokens == want.tokens
            assert got.stats.cycles == want.stats.cycles and got.stats.n_cycles > 0
    with Orthrus(files["base_q8_0"], files["adapter"], n_ctx=512) as model:
        for prompt in PROMPTS:
            got = model.generate(prompt, max_tokens=32, block_size=TRAINED_K)
            assert got.tokens == model.ar_view().generate(prompt, max_tokens=32).tokens


def test_another_draft_scheme_is_refused_by_name(files, tmp_path):
    """A file whose recurrent layers draft another way (the "dual scan" of a vLLM port, not built) is refused by
    llama.cpp with the key and both schemes, merged or as an adapter, instead of drafting wrongly."""
    merged = write_tiny_qwen35(tmp_path / "dual.gguf", config=MOE, block_size=4, twin_noise=0.0,
                               recurrent_draft="dual_scan")
    with pytest.raises(PyorthrusError, match="qwen35moe.diffusion.recurrent_draft is 'dual_scan': this build drafts "
                                             "recurrent layers only as 'causal_twin'"):
        Orthrus(merged, n_ctx=256)
    adapter = write_tiny_qwen35_adapter(files["merged"], tmp_path / "dual-adapter.gguf", recurrent_draft="dual_scan")
    with pytest.raises(PyorthrusError, match="orthrus.diffusion.recurrent_draft is 'dual_scan': this build drafts "
                                             "recurrent layers only as 'causal_twin'"):
        Orthrus(files["base"], adapter, n_ctx=256)
