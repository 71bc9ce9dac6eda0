"""Issue 16, the upstream user's journey: a plain base GGUF as community quantizers publish them (Q8_0 and Q4_K_M,
made by llama.cpp's own converter and quantizer) plus the adapter-only GGUF `pyorthrus convert` makes from an
upstream-format Orthrus checkpoint, for a Qwen3 base and a Qwen2/Qwen2.5 base (the `qwen3_journey` and
`qwen2_journey` fixtures in conftest.py). The F32 reference check of the same files is in
test_llama_orthrus_reference.py."""
from __future__ import annotations

import json
import warnings

import gguf
import pytest

from pyorthrus import Orthrus, PyorthrusError, cli
from pyorthrus.testing import fixtures
from pyorthrus.convert import convert_checkpoint
from pyorthrus.gguf_meta import adapter_fit, open_reader

from conftest import JOURNEY_SHAPE

PROMPTS = ["Hello, how are you?", "def fibonacci(n):", "The capital of France is"]
ARCHS = ["qwen3", "qwen2"]


@pytest.fixture(params=ARCHS)
def journey(request):
    return request.param, request.getfixturevalue(f"{request.param}_journey")


def test_the_base_is_a_plain_gguf_and_inspect_says_the_adapter_fits(journey, capsys):
    arch, files = journey
    for weight_type in ("f32", "q8_0", "q4_k_m"):
        reader = open_reader(files[weight_type])
        assert reader.fields["general.architecture"].contents() == arch
        assert not any("_diff" in t.name for t in reader.tensors)
    types = {t.tensor_type.name for t in open_reader(files["q4_k_m"]).tensors}
    assert "Q4_K" in types  # K-quants really stored
    assert cli.main(["inspect", str(files["q4_k_m"]), str(files["adapter"]), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["fits"] and {c["check"] for c in fit["checks"]} >= {"architecture", "layers", "vocabulary"}
    assert cli.main(["inspect", str(files["q4_k_m"]), str(files["adapter"])]) == 0
    assert "the adapter fits this base" in capsys.readouterr().out


@pytest.mark.parametrize("weight_type", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("flash_attn", [False, True])
def test_greedy_orthrus_equals_ar_on_the_quantized_base(journey, weight_type, flash_attn):
    arch, files = journey
    with Orthrus(files[weight_type], files["adapter"], n_ctx=256, n_threads=2, flash_attn=flash_attn) as model:
        assert model.trained_block_size == 8 and model.strict
        ar = model.ar_view()
        for prompt in PROMPTS:
            want = ar.generate(prompt, max_tokens=24).tokens
            for k in (2, 4, 8):
                out = model.generate(prompt, max_tokens=24, block_size=k)
                assert out.tokens == want, f"{arch} {weight_type} fa={flash_attn} K={k} {prompt!r}"
                assert out.stats.n_cycles > 0


def test_pyorthrus_check_is_green_with_the_sampling_test(journey, tmp_path, capsys):
    prompt = tmp_path / "prompt.jsonl"
    prompt.write_text('{"prompt": "My favourite colour is"}\n')
    base, adapter = str(journey[1]["q8_0"]), str(journey[1]["adapter"])
    assert cli.main(["check", "-m", base, "-a", adapter, "-k", "4", "--limit", "2", "-n", "16", "-c", "256",
                     "-t", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["passed"] and report["summary"]["exact_match_rate"] == 1.0
    # top-k 4 keeps the counts testable at 60 runs per decoder on a random-weight model's flat distributions
    assert cli.main(["check", "-m", base, "-a", adapter, "-k", "4", "--prompts", str(prompt), "--raw", "-n", "4",
                     "--sampling", "--seeds", "60", "--positions", "2", "--top-k", "4", "-c", "256", "-t", "2",
                     "--json"]) == 0
    sampling = json.loads(capsys.readouterr().out)["sampling"]
    assert sampling["passed"] and sampling["tested_positions"] >= 1


def test_an_adapter_for_another_base_is_one_line_naming_both_files(qwen3_journey, qwen2_journey, smollm2_path,
                                                                   tmp_path, capsys):
    """A Qwen3 adapter on a Llama or a Qwen2 base, and an adapter of a deeper model (a 1.7B adapter on an 8B base,
    in small): refused before any decoding, by inspect and by every verb that loads a model, naming both files."""
    deeper = convert_checkpoint(
        fixtures.write_tiny_orthrus_qwen3(tmp_path / "deeper", seed=32, head_dim=64, num_layers=3,
                                          **JOURNEY_SHAPE),
        adapter_out=tmp_path / "deeper.gguf", progress=False)["adapter"]
    adapter = qwen3_journey["adapter"]
    cases = [(smollm2_path, adapter, "architecture is qwen3 in the adapter, llama in the base",
              "adapter is for architecture 'qwen3' but the model is 'llama'"),
             (qwen2_journey["q8_0"], adapter, "architecture is qwen3 in the adapter, qwen2 in the base",
              "adapter is for architecture 'qwen3' but the model is 'qwen2'"),
             (qwen3_journey["q4_k_m"], deeper, "layers is 3 in the adapter, 2 in the base",
              "orthrus.base.block_count is 3 in the adapter but 2 in the model")]
    for base, wrong, fit_message, load_message in cases:
        fit = adapter_fit(base, wrong)
        assert not fit["fits"]
        assert cli.main(["inspect", str(base), str(wrong)]) == 1
        assert f"{wrong} does not fit {base}: {fit_message}" in capsys.readouterr().out
        with pytest.raises(PyorthrusError) as info:
            Orthrus(base, wrong, n_ctx=128)
        assert str(info.value) == f"{wrong} on {base}: {load_message}"
        assert cli.main(["generate", "-m", str(base), "-a", str(wrong), "-p", "hi", "-n", "4"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"pyorthrus generate: error: {wrong} on {base}: {load_message}"]


def test_the_community_merged_format_quantized_to_q4_k_m_decodes_and_warns(qwen3_journey, tmp_path):
    """A merged `orthrus` file quantized as a whole to Q4_K_M: llama.cpp's quantizer stores the diff tensors in
    4 bits too. It loads and decodes exactly as AR, and the user is warned that the drafts may suffer."""
    from pyorthrus.bench import shapes
    from pyorthrus.gguf_meta import inspect_gguf

    merged = convert_checkpoint(qwen3_journey["checkpoint"], merged_out=tmp_path / "merged.f32.gguf",
                                outtype="f32", progress=False)["merged"]
    quantized = shapes.quantize_gguf(merged, tmp_path / "merged.q4_k_m.gguf", "q4_k_m", threads=2)
    info = inspect_gguf(quantized)
    assert info["architecture"] == "orthrus" and info["type"] == "merged"
    assert info["low_precision_diff_tensors"] and set(info["low_precision_diff_tensors"]) <= {"Q4_K", "Q5_0",
                                                                                               "Q6_K"}
    with pytest.warns(UserWarning, match="diff weight matrices are stored below Q8_0"):
        model = Orthrus(quantized, n_ctx=256, n_threads=2)
    with model:
        for prompt in PROMPTS:
            assert model.generate(prompt, max_tokens=24, block_size=4).tokens == \
                model.ar_view().generate(prompt, max_tokens=24).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # F32 diff weights: no warning
        with Orthrus(merged, n_ctx=256, n_threads=2) as unquantized:
            assert unquantized.trained_block_size == 8


def test_a_qwen2_adapter_without_its_biases_is_refused(qwen2_journey, tmp_path):
    """Qwen2's q/k/v projections have biases, so their diff copies must too: an adapter missing one would draft
    with another function than it was trained as."""
    from pyorthrus.convert.base_gguf import copied_metadata, planned_base_tensors
    from pyorthrus.convert.gguf_out import uint32, write_gguf

    reader = gguf.GGUFReader(str(qwen2_journey["adapter"]))
    partial = tmp_path / "no-bias.gguf"
    mask = reader.fields["tokenizer.ggml.mask_token_id"].contents()
    write_gguf(partial, "qwen2", copied_metadata(reader) + [uint32("tokenizer.ggml.mask_token_id", mask)],
               [t for t in planned_base_tensors(reader) if t.name != "blk.1.attn_k_diff.bias"], progress=False)
    with pytest.raises(PyorthrusError, match="adapter tensor 'blk.1.attn_k_diff.bias' is missing"):
        Orthrus(qwen2_journey["q8_0"], partial, n_ctx=128)
