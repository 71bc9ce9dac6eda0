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


def test_the_reference_has_the_experts_and_a_moe_gguf_trains(files, tmp_path, capsys):
    """The PyTorch reference routes as llama.cpp's qwen35moe graph does (softmax router, the top 2 of 4 experts
    renormalised, plus the shared expert times sigmoid(its gate)): llama.cpp's AR, draft and verify logits on the
    merged file are within 5e-3 of the reference read from that file (its tied output is F16, which rounds
    llama.cpp's activations to F16: the dense tiny qwen35 differs as much, about 1e-3; a wrong route is off by
    tenths). `pyorthrus train` on the plain base then writes twins that `convert --adapter-out`
    makes a qwen35moe adapter for it, decoding exactly as AR with cycles, and `check --reference` agrees."""
    import json

    import numpy as np
    import torch

    from pyorthrus.reference_qwen35 import load_gguf
    from pyorthrus.testing.qwen35 import llama_cpp_views

    ref = load_gguf(files["merged"])
    rng = np.random.default_rng(0)
    prefix, x = rng.integers(0, 151000, size=11).tolist(), int(rng.integers(0, 151000))
    draft = [x] + [ref.cfg.mask_token_id] * (TRAINED_K - 1)
    verify = [x] + rng.integers(0, 151000, size=TRAINED_K - 1).tolist()
    with torch.no_grad():
        cache = ref.new_cache()
        want = [ref.forward_ar(prefix, cache), ref.forward_draft(draft, cache), ref.forward_ar(verify, cache)]
    for what, got, w in zip(("prefix", "draft", "verify"), llama_cpp_views(files["merged"], prefix, draft, verify),
                            want):
        assert float(np.max(np.abs(got - w.numpy()))) < 5e-3, what

    data = tmp_path / "train.txt"
    data.write_text("The capital of France is Paris. The capital of Italy is Rome.\n")
    out, adapter = tmp_path / "trained", tmp_path / "adapter.gguf"
    assert cli.main(["train", "--base", str(files["base"]), "--data", str(data), "--out", str(out), "-K", "4",
                     "--seq-len", "32", "--max-steps", "3", "--json"]) == 0
    assert json.loads((out / "config.json").read_text())["num_experts"] == MOE.experts
    assert cli.main(["convert", str(out), "--adapter-out", str(adapter)]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(files["base"]), str(adapter)]) == 0
    assert "the adapter fits this base" in capsys.readouterr().out
    with Orthrus(files["base"], adapter, n_ctx=256) as model:
        for prompt in PROMPTS:
            got = model.generate(prompt, max_tokens=24, block_size=4)
            assert got.tokens == model.ar_view().generate(prompt, max_tokens=24).tokens and got.stats.n_cycles > 0
    assert cli.main(["check", "-m", str(files["base"]), "-a", str(adapter), "-k", "4", "--limit", "2", "-n", "16",
                     "-c", "256", "--reference", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["passed"] and report["reference"]["summary"]["top1_agreement"] == 1.0
