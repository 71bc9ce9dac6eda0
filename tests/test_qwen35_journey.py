"""From a reference Orthrus-Qwen3.5 checkpoint to decoding (issue 37): `pyorthrus convert` runs llama.cpp's own
converter on the base weights and again on the twins under their AR names, so each twin gets exactly its base
tensor's transforms (V heads re-ordered from grouped to tiled, A_log -> -exp(A_log), the (1 + w) norm offsets, the
DeltaNet output norm left plain), then writes one merged `qwen35` file that the patched llama.cpp decodes exactly as
AR, as built, quantized to Q8_0 and to Q4_K_M."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pyorthrus import Orthrus, PyorthrusError, cli
from pyorthrus.bench.shapes import quantize_gguf
from pyorthrus.convert import convert_checkpoint
from pyorthrus.gguf_meta import inspect_gguf, open_reader
from pyorthrus.bench.shapes import Qwen35Shape
from pyorthrus.testing.qwen35 import write_tiny_orthrus_qwen35_checkpoint

PROMPTS = ["The capital of France is", "def fibonacci(n):\n"]
CONFIG = Qwen35Shape()  # 3 Gated DeltaNet layers (2 key heads, 4 value heads: the V order matters) + 1 attention


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """A checkpoint as the reference initialises it (twins = copies of the AR weights), converted to F32."""
    out = tmp_path_factory.mktemp("qwen35-init")
    # sharp next-token distributions: an argmax the trainer's test can teach the twins
    ckpt = write_tiny_orthrus_qwen35_checkpoint(out / "Orthrus-Qwen3.5-tiny", seed=1, dtype=torch.float32,
                                                logit_scale=6.0)
    return ckpt, convert_checkpoint(ckpt, merged_out=out / "merged.f32.gguf", outtype="f32", progress=False)["merged"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint whose twins moved away from the AR weights (as training moves them), bf16 as the reference
    saves it, and its merged F32 file."""
    out = tmp_path_factory.mktemp("qwen35-trained")
    ckpt = write_tiny_orthrus_qwen35_checkpoint(out / "ckpt", seed=2, twin_noise=0.05)
    assert cli.main(["convert", str(ckpt), "--merged-out", str(out / "merged.f32.gguf"), "--outtype", "f32"]) == 0
    return ckpt, out / "merged.f32.gguf"


@pytest.fixture(scope="module")
def user_bases(trained, tmp_path_factory):
    """The plain Qwen3.5 GGUF a user already has for `trained`'s base: F32 from llama.cpp's converter, and Q8_0."""
    from pyorthrus.convert.checkpoint import OrthrusCheckpoint
    from pyorthrus.convert.hf_base import convert_base_to_gguf

    out = tmp_path_factory.mktemp("qwen35-user-base")
    f32 = convert_base_to_gguf(OrthrusCheckpoint(trained[0]), "f32", out)
    return {"f32": f32, "q8_0": quantize_gguf(f32, out / "base.q8_0.gguf", "q8_0", threads=2)}


@pytest.fixture(scope="module")
def adapter(trained, tmp_path_factory):
    """`pyorthrus convert --adapter-out` of `trained`: the twins alone (F32), for the base the user has."""
    path = tmp_path_factory.mktemp("qwen35-adapter") / "qwen35-orthrus-adapter.gguf"
    assert cli.main(["convert", str(trained[0]), "--adapter-out", str(path), "--outtype", "f32"]) == 0
    return path


def tensors_of(path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in open_reader(path).tensors}


def test_initialised_twins_convert_to_their_base_tensors_bit_for_bit(initialised):
    merged = initialised[1]
    info = inspect_gguf(merged)
    assert (info["architecture"], info["type"], info["block_size"], info["mask_token_id"]) == \
        ("qwen35", "merged", 8, 151669)
    coverage = info["diff_coverage"]
    assert coverage["complete_layers"] == CONFIG.layers and not coverage["missing"]
    assert info["recurrent"]["recurrent_layers"] == 3
    tensors = tensors_of(merged)
    twins = [name for name in tensors if "_diff" in name]
    assert len(twins) == 3 * 9 + 6
    for name in twins:
        assert np.array_equal(tensors[name], tensors[name.replace("_diff", "")]), name


def test_trained_twins_get_the_base_transforms(trained):
    """The transforms are checked on values that differ from the base's: per value head, ssm_a_diff is
    -exp(A_log_diff) and ssm_dt_diff.bias dt_bias_diff in llama.cpp's tiled head order; the attention q/k norm
    twins carry Qwen3.5's + 1, the DeltaNet output norm twin does not."""
    ckpt, merged = trained
    hf = {k: v.float().numpy() for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    gguf_tensors = tensors_of(merged)
    per_key = CONFIG.value_heads // CONFIG.groups
    tiled = [g * per_key + v for v in range(per_key) for g in range(CONFIG.groups)]  # grouped index, tiled order
    assert tiled != sorted(tiled)
    a = "model.layers.0.linear_attn."
    np.testing.assert_allclose(gguf_tensors["blk.0.ssm_a_diff"], -np.exp(hf[a + "A_log_diff"][tiled]), rtol=1e-6)
    np.testing.assert_array_equal(gguf_tensors["blk.0.ssm_dt_diff.bias"], hf[a + "dt_bias_diff"][tiled])
    np.testing.assert_array_equal(gguf_tensors["blk.0.ssm_norm_diff.weight"], hf[a + "norm_diff.weight"])
    assert not np.array_equal(gguf_tensors["blk.0.ssm_a_diff"], gguf_tensors["blk.0.ssm_a"])
    s = "model.layers.3.self_attn."
    np.testing.assert_allclose(gguf_tensors["blk.3.attn_q_norm_diff.weight"], hf[s + "q_norm_diff.weight"] + 1,
                               rtol=1e-6)
    np.testing.assert_allclose(gguf_tensors["blk.3.attn_k_norm_diff.weight"], hf[s + "k_norm_diff.weight"] + 1,
                               rtol=1e-6)


@pytest.mark.parametrize("weight_type", ["f32", "q8_0", "q4_k_m"])
def test_converted_qwen35_decodes_as_ar(trained, weight_type, tmp_path):
    merged = trained[1]
    if weight_type != "f32":
        merged = quantize_gguf(merged, tmp_path / f"merged.{weight_type}.gguf", weight_type, threads=2)
    for flash_attn in (False, True) if weight_type == "f32" else (True,):
        # quantized as a whole, Q4_K_M stores the twins below Q8_0 too: the user is told
        with pytest.warns(UserWarning, match="stored below Q8_0") if weight_type == "q4_k_m" else \
                contextlib.nullcontext():
            model = Orthrus(merged, n_ctx=256, flash_attn=flash_attn)
        with model:
            assert model.trained_block_size == 8 and model.recurrent
            for prompt in PROMPTS:
                want = model.ar_view().generate(prompt, max_tokens=24).tokens
                for k in (2, 4, 8):
                    got = model.generate(prompt, max_tokens=24, block_size=k)
                    assert got.tokens == want, (weight_type, flash_attn, k, prompt)
                    assert got.stats.n_cycles > 0


@pytest.mark.parametrize("reference", ["gguf", "checkpoint"])
def test_pyorthrus_check_is_green_on_the_converted_file(trained, reference, capsys):
    """`check --reference` too: llama.cpp's AR against the Qwen3.5 reference, read from the file itself
    (dequantized) or from the checkpoint it was converted from."""
    source = [] if reference == "gguf" else [str(trained[0])]
    assert cli.main(["check", "-m", str(trained[1]), "-k", "4", "--limit", "2", "-n", "16", "-c", "256", "-t", "2",
                     "--reference", *source, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["passed"] and report["summary"]["exact_match_rate"] == 1.0
    summary = report["reference"]["summary"]
    assert summary["top1_agreement"] == 1.0 and summary["max_abs_logit_diff"] < 1e-3, summary


def test_what_the_qwen35_converter_refuses(trained, tmp_path):
    ckpt = trained[0]
    tensors = load_file(str(ckpt / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ckpt / "config.json").read_text())
    missing = "model.layers.1.linear_attn.A_log_diff"
    save_file({k: v for k, v in tensors.items() if k != missing}, str(broken / "model.safetensors"))
    with pytest.raises(PyorthrusError, match=f"{broken}: missing diff tensor {missing} \\(layer 1\\)"):
        convert_checkpoint(broken, merged_out=tmp_path / "m.gguf")
    save_file({k: v for k, v in tensors.items() if "_diff" in k}, str(broken / "model.safetensors"))
    with pytest.raises(PyorthrusError, match="diff-only checkpoint; a merged file needs --base BASE.gguf"):
        convert_checkpoint(broken, merged_out=tmp_path / "m.gguf")
    wrong = "model.layers.0.linear_attn.in_proj_z_diff.weight"
    save_file({k: v[:-1] if k == wrong else v for k, v in tensors.items() if "_diff" in k},
              str(broken / "model.safetensors"))
    with pytest.raises(PyorthrusError, match=f"{wrong} has shape \\[63, 64\\], the config's \\[64, 64\\]"):
        convert_checkpoint(broken, adapter_out=tmp_path / "a.gguf")
    config = json.loads((ckpt / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "layer_types": config["layer_types"][:2]}))
    with pytest.raises(PyorthrusError, match="layer_types must list"):
        convert_checkpoint(broken, merged_out=tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "a.gguf").exists()


def test_twins_merged_into_the_users_quantized_base(trained, user_bases, tmp_path):
    """The usual journey: a Qwen3.5 GGUF the user already has (here Q8_0, made by llama.cpp's converter and
    quantizer) plus the reference checkpoint -> a merged file whose base tensors are the user's bytes and whose twins
    are Q8_0 (`--outtype q8_0`), decoding as AR."""
    ckpt, base = trained[0], user_bases["q8_0"]
    merged = convert_checkpoint(ckpt, merged_out=tmp_path / "merged.gguf", base=base, outtype="q8_0",
                                progress=False)["merged"]
    base_tensors, merged_reader = tensors_of(base), open_reader(merged)
    for t in merged_reader.tensors:
        if "_diff" in t.name:
            assert t.tensor_type.name == ("F32" if t.data.ndim == 1 or "conv1d" in t.name else "Q8_0"), t.name
        else:
            assert np.array_equal(np.asarray(t.data), base_tensors[t.name]), t.name
    assert len(merged_reader.tensors) == len(base_tensors) + 3 * 9 + 6
    with Orthrus(merged, n_ctx=256) as model:
        got = model.generate(PROMPTS[0], max_tokens=24, block_size=4)
        assert got.tokens == model.ar_view().generate(PROMPTS[0], max_tokens=24).tokens


def test_an_adapter_file_beside_the_users_base(trained, adapter, user_bases, capsys):
    """`--adapter-out`: the twins alone, attached to the plain base the user has (patch 0024). On the F32 base the
    cycles are the merged F32 file's, token for token and cycle for cycle; on the Q8_0 base greedy equals AR."""
    merged = trained[1]
    info = inspect_gguf(adapter)
    assert (info["type"], info["architecture"], info["block_size"]) == ("adapter", "qwen35", 8)
    # the draft scheme llama.cpp checks (patch 0026), in the adapter and in the merged file
    assert info["recurrent_draft"] == inspect_gguf(merged)["recurrent_draft"] == "causal_twin"
    assert info["diff_coverage"]["complete_layers"] == CONFIG.layers and not info["diff_coverage"]["missing"]
    capsys.readouterr()
    assert cli.main(["inspect", str(user_bases["q8_0"]), str(adapter)]) == 0
    assert "the adapter fits this base" in capsys.readouterr().out
    with Orthrus(user_bases["f32"], adapter, n_ctx=256) as on_base, Orthrus(merged, n_ctx=256) as on_merged:
        assert on_base.recurrent and on_base.trained_block_size == 8
        for prompt in PROMPTS:
            want = on_base.ar_view().generate(prompt, max_tokens=24).tokens
            for k in (2, 4, 8):
                got, same = on_base.generate(prompt, max_tokens=24, block_size=k), \
                    on_merged.generate(prompt, max_tokens=24, block_size=k)
                assert got.tokens == want == same.tokens, (k, prompt)
                assert got.stats.n_cycles == same.stats.n_cycles > 0
    with Orthrus(user_bases["q8_0"], adapter, n_ctx=256) as model:
        assert model.generate(PROMPTS[1], max_tokens=24, block_size=4).tokens == \
            model.ar_view().generate(PROMPTS[1], max_tokens=24).tokens


def test_an_adapter_converts_without_torch(trained, adapter, tmp_path):
    """`convert --adapter-out` of a Qwen3.5 checkpoint needs neither torch nor llama.cpp's converter (each twin
    takes its base tensor's transforms from pyorthrus.qwen35_layout): in a process that cannot import torch it
    writes the same file, byte for byte."""
    out = tmp_path / "adapter.gguf"
    run = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; "
                          "from pyorthrus.cli import main; sys.exit(main())", "convert", str(trained[0]),
                          "--adapter-out", str(out), "--outtype", "f32"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == adapter.read_bytes()


def test_an_adapter_missing_a_twin_is_refused(adapter, user_bases, tmp_path):
    from pyorthrus.convert.base_gguf import copied_metadata, planned_base_tensors
    from pyorthrus.convert.gguf_out import uint32, write_gguf
    from pyorthrus.formats import KEY_MASK_TOKEN_ID

    reader = open_reader(adapter)
    broken = tmp_path / "missing-twin.gguf"
    kv = copied_metadata(reader) + [uint32(KEY_MASK_TOKEN_ID, inspect_gguf(adapter)["mask_token_id"])]
    write_gguf(broken, "qwen35", kv,
               [t for t in planned_base_tensors(reader) if t.name != "blk.1.ssm_a_diff"], progress=False)
    with pytest.raises(PyorthrusError, match=f"{broken} on {user_bases['f32']}: adapter tensor "
                                             "'blk.1.ssm_a_diff' is missing"):
        Orthrus(user_bases["f32"], broken, n_ctx=256)


def test_the_reference_reads_qwen35_gguf_files(trained, adapter, user_bases):
    """reference_qwen35.load_gguf brings llama.cpp's tensors back to transformers' layout (qwen35_layout.from_gguf,
    the inverse of the transforms convert writes): the merged F32 file, and the user's F32 base with the adapter,
    give the checkpoint's own model, both views (within 1e-5 of the logits' scale; measured 0); the base alone gets
    twins that copy its AR tensors, as the reference initialises them."""
    from pyorthrus.formats import hf_ar_name, qwen35_twin_names
    from pyorthrus.reference_qwen35 import load_checkpoint, load_gguf

    ckpt, merged = trained
    ids = [9707, 11, 1879, 0, 2, 3, 45, 1000, 77, 5, 6]

    def views(model) -> list[torch.Tensor]:
        cache = model.new_cache()
        with torch.no_grad():
            return [model.forward_ar(ids[:-1], cache), model.forward_draft([ids[-1]] + [151669] * 7, cache)]

    want = views(load_checkpoint(ckpt))
    for model in (load_gguf(merged), load_gguf(user_bases["f32"], adapter)):
        for got, w in zip(views(model), want):
            assert float((got - w).abs().max()) <= 1e-5 * float(w.abs().max())
    base_only = load_gguf(user_bases["f32"])
    for twin in qwen35_twin_names(base_only.cfg):
        assert torch.equal(base_only.w[twin], base_only.w[hf_ar_name(twin)]), twin


def test_a_broken_qwen35_gguf_is_refused_in_one_line(user_bases, tmp_path, capsys):
    """The reference reads a qwen35 GGUF's sizes from its keys and checks every tensor against them: a key that
    is no size, or one that disagrees with the tensors, is named in one line (here by `pyorthrus train`), nothing
    written."""
    from pyorthrus.testing.gguf_edits import with_metadata_value

    data = tmp_path / "train.txt"
    data.write_text("The capital of France is Paris.\n")
    for key, value, error in (("qwen35.ssm.time_step_rank", 0, "qwen35.ssm.time_step_rank is 0, not a positive "
                                                                "integer"),
                              ("qwen35.ssm.group_count", 1, "tensor blk.0.ssm_conv1d.weight has shape [128, 4], its "
                                                            "file's keys give [96, 1, 4] (in transformers' layout)")):
        broken = tmp_path / f"{key}.gguf"
        with_metadata_value(user_bases["f32"], broken, key, value)
        assert cli.main(["train", "--base", str(broken), "--data", str(data), "--out", str(tmp_path / "out")]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"pyorthrus train: error: {broken}: {error}"]
        assert not (tmp_path / "out").exists()


def test_a_base_too_big_for_memory_is_refused_before_it_loads(trained, user_bases, tmp_path, monkeypatch, capsys):
    """Training holds every weight in float32 and each twin four times over (itself, its gradient, two AdamW
    moments): `pyorthrus train` counts them from the file's headers and refuses a base that would not fit the
    memory available, in one line, before loading anything."""
    from pyorthrus import options
    from pyorthrus.formats import qwen35_twin_names
    from pyorthrus.reference_qwen35 import load_checkpoint
    from pyorthrus.train.qwen35 import base_parameters

    model = load_checkpoint(trained[0])
    twins = sum(model.w[name].numel() for name in qwen35_twin_names(model.cfg))
    weights = sum(t.numel() for name, t in model.w.items() if "_diff" not in name)
    assert base_parameters(user_bases["q8_0"]) == base_parameters(trained[0]) == (weights, twins)
    monkeypatch.setattr(options, "available_memory", lambda: 4 * weights + 8 * twins)
    data = tmp_path / "train.txt"
    data.write_text("The capital of France is Paris.\n")
    assert cli.main(["train", "--base", str(user_bases["q8_0"]), "--data", str(data), "--out",
                     str(tmp_path / "out")]) == 1
    need, have = (4 * weights + 16 * twins) / 2**30, (4 * weights + 8 * twins) / 2**30
    assert capsys.readouterr().err.strip() == (
        f"pyorthrus train: error: {user_bases['q8_0']}: training its twins in float32 needs about {need:.1f} GiB of "
        f"memory ({weights / 1e9:.2f}B weights, {twins / 1e9:.2f}B of them twinned), {have:.1f} GiB available")
    assert not (tmp_path / "out").exists()


def test_the_chunked_delta_rule_is_the_recurrence(trained):
    """reference_qwen35.gated_delta_rule (a chunk of tokens per triangular solve) against the recurrence written
    token by token, across chunk boundaries and from a non-zero state; and forward_drafts (many blocks at once, each
    from its own cache) against one forward_draft per block."""
    from pyorthrus.reference_qwen35 import gated_delta_rule, load_checkpoint

    gen = torch.Generator().manual_seed(0)
    heads, n, dk, dv = 3, 13, 8, 5
    q, k = (F.normalize(torch.randn(2, heads, n, dk, generator=gen), dim=-1) for _ in range(2))
    v, state = torch.randn(2, heads, n, dv, generator=gen), torch.randn(2, heads, dk, dv, generator=gen)
    g = -F.softplus(torch.randn(2, heads, n, generator=gen))
    beta = torch.sigmoid(torch.randn(2, heads, n, generator=gen))
    s, want = state, []
    for t in range(n):
        s = s * torch.exp(g[..., t])[..., None, None]
        u = beta[..., t, None] * (v[..., t, :] - (k[..., t, :, None] * s).sum(-2))
        s = s + k[..., t, :, None] * u[..., None, :]
        want.append((q[..., t, :, None] * s).sum(-2))
    for chunk in (4, 64):
        out, final = gated_delta_rule(q, k, v, g, beta, state, chunk=chunk)
        assert float((out - torch.stack(want, -2)).abs().max()) < 1e-5 and float((final - s).abs().max()) < 1e-5

    model = load_checkpoint(trained[0])
    ids = [9707, 11, 1879, 0, 2, 3, 45, 1000, 77, 5, 6, 7, 8, 9]
    caches, cache = [model.new_cache()], model.new_cache()
    for begin, end in ((0, 5), (5, 13)):
        model.forward_ar(ids[begin:end], cache)
        caches.append(cache.copy())
    blocks = [[ids[c.n_past]] + [151669] * 7 for c in caches]
    with torch.no_grad():
        together = model.forward_drafts(blocks, caches)
        for block, c, got in zip(blocks, caches, together):
            alone = model.forward_draft(block, c)
            assert float((got - alone).abs().max()) <= 1e-5 * float(alone.abs().max())


def test_a_qwen35_gguf_trains_into_an_adapter_for_it(trained, user_bases, tmp_path, capsys):
    """`pyorthrus train --base` on the Qwen3.5 GGUF a user has (Q8_0 here, dequantized to float32): the twins start
    as copies of its AR tensors, the mask is the id an HF base with the same tokenizer gets (the first of the
    padding tokens llama.cpp's converter appends), and the output holds the twins alone, in the reference's
    layout. `convert --adapter-out` makes it an adapter for that GGUF (pyorthrus.qwen35_layout: no llama.cpp
    converter, no tokenizer files needed) and `--merged-out --base` a merged file; both decode exactly as AR, with
    cycles. `--init-from` continues from either (a qwen35moe base: tests/test_qwen35moe.py)."""
    from pyorthrus.formats import qwen35_twin_names
    from pyorthrus.reference_qwen35 import hf_tensors, load_gguf
    from pyorthrus.train.qwen35 import default_mask_token

    base = user_bases["q8_0"]
    data = tmp_path / "train.txt"
    data.write_text("The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is "
                    "Madrid.\n\ndef fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n")
    out = tmp_path / "trained"
    assert cli.main(["train", "--base", str(base), "--data", str(data), "--out", str(out), "-K", "4", "--seq-len",
                     "32", "--batch-size", "2", "--max-steps", "3", "--json"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["mask_token_id"] == default_mask_token(trained[0], 151936) == 151669
    assert (config["block_size"], config["orthrus_base_model"]) == (4, str(base.resolve()))
    twins = load_file(str(out / "model.safetensors"))
    start = load_gguf(base)
    assert set(twins) == set(qwen35_twin_names(start.cfg))
    assert not all(torch.equal(value, start.w[name]) for name, value in twins.items())  # they trained

    adapter, merged = tmp_path / "adapter.gguf", tmp_path / "merged.gguf"
    assert cli.main(["convert", str(out), "--adapter-out", str(adapter), "--outtype", "q8_0"]) == 0
    assert cli.main(["convert", str(out), "--merged-out", str(merged), "--base", str(base)]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(base), str(adapter)]) == 0
    assert "the adapter fits this base" in capsys.readouterr().out
    with Orthrus(base, adapter, n_ctx=256) as on_base, Orthrus(merged, n_ctx=256) as on_merged:
        for prompt in PROMPTS:
            want = on_base.ar_view().generate(prompt, max_tokens=24).tokens
            for model in (on_base, on_merged):
                got = model.generate(prompt, max_tokens=24, block_size=4)
                assert got.tokens == want and got.stats.n_cycles > 0, prompt

    # --init-from: the trained twins, from the checkpoint or from the (Q8_0) adapter, go on unchanged at lr 0
    for init, want in ((out, twins), (adapter, {name: t for name, t in hf_tensors(open_reader(adapter),
                                                                                  start.hf).items()})):
        again = tmp_path / f"again-{init.name}"
        assert cli.main(["train", "--base", str(base), "--data", str(data), "--out", str(again), "-K", "4",
                         "--seq-len", "32", "--max-steps", "1", "--lr", "0", "--json", "--init-from", str(init)]) == 0
        got = load_file(str(again / "model.safetensors"))
        assert all(torch.equal(got[name], value) for name, value in want.items()), init


@pytest.mark.parametrize("flash_attn", [False, True])
def test_llama_cpp_views_match_the_pytorch_reference(trained, flash_attn):
    """AR logits of a prefix, draft logits of a block [x, MASK...] and verify logits of a block, from llama.cpp on
    the converted F32 file and from pyorthrus.reference_qwen35 on the checkpoint itself: within 1e-4 with flash
    attention off (F32 cache), 5e-2 with it on (the CPU kernel rounds Q/K/V to F16)."""
    from pyorthrus.reference_qwen35 import load_checkpoint
    from pyorthrus.testing.fixtures import QWEN3_MASK_TOKEN_ID
    from pyorthrus.testing.qwen35 import llama_cpp_views

    ckpt, merged = trained
    block = 8
    rng = np.random.default_rng(0)
    prefix = [int(t) for t in rng.integers(0, 151000, size=11)]
    x = int(rng.integers(0, 151000))
    draft = [x] + [QWEN3_MASK_TOKEN_ID] * (block - 1)
    verify = [x] + [int(t) for t in rng.integers(0, 151000, size=block - 1)]
    ref = load_checkpoint(ckpt)
    with torch.no_grad():
        cache = ref.new_cache()
        want = [ref.forward_ar(prefix, cache), ref.forward_draft(draft, cache), ref.forward_ar(verify, cache)]
    got = llama_cpp_views(merged, prefix, draft, verify, flash_attn)
    for what, g, w in zip(("prefix", "draft", "verify"), got, want):
        err = float(np.max(np.abs(g - w.numpy())))
        assert err < (5e-2 if flash_attn else 1e-4), f"{what}: max |llama.cpp - reference| = {err}"
    assert float(np.max(np.abs(got[1] - got[2]))) > 1e-3  # the views really differ


def test_trained_twins_are_accepted_more_often(initialised, tmp_path, capsys):
    """`pyorthrus train` on an Orthrus-Qwen3.5 checkpoint as the reference initialises it (twins = AR copies), on
    self-distilled data (AR's own greedy continuations of 2 prompts), then `convert`, then llama.cpp's cycles on the
    same prompts: the trained twins' drafts are accepted more often than the untrained ones' (measured: 1.80 -> 4.33
    tokens per cycle at K = 8), the forward KL of the draft blocks falls, every AR tensor stays as it was, and the
    output is still exactly AR's. In-sample on purpose: a random model's continuations have nothing to generalise,
    so this proves the path (trainer -> converter -> llama.cpp's cycles), not a recipe."""
    from pyorthrus.reference_qwen35 import load_checkpoint
    from pyorthrus.testing.fixtures import QWEN3_MASK_TOKEN_ID
    from pyorthrus.train.qwen35 import document_loss

    ckpt, merged = initialised
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, 151000, size=6)] for _ in range(2)]

    def decode(path) -> tuple[list[list[int]], float]:
        """AR's continuations of the prompts, and the cycles' mean tokens per cycle on them (K = 8)"""
        with Orthrus(path, n_ctx=256) as model:
            docs, per_cycle = [], []
            for prompt in prompts:
                got = model.generate(prompt, max_tokens=26, block_size=8)
                assert got.tokens == model.ar_view().generate(prompt, max_tokens=26).tokens
                docs.append(prompt + got.tokens)
                per_cycle.append(got.stats.tokens_per_cycle)
        return docs, float(np.mean(per_cycle))

    docs, untrained = decode(merged)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"ids": d, "n_prompt": 6}) + "\n" for d in docs))

    def draft_kl(path) -> float:
        ref = load_checkpoint(path)
        with torch.no_grad():
            return sum(float(document_loss(ref, d, list(range(5, len(d) - 1)), 8, QWEN3_MASK_TOKEN_ID,
                                           "uniform")[0]) for d in docs)

    out = tmp_path / "trained"
    assert cli.main(["train", "--base", str(ckpt), "--data", str(data), "--out", str(out), "-K", "8",
                     "--seq-len", "32", "--batch-size", "2", "--max-steps", "150", "--lr", "1e-2", "--row-weights",
                     "uniform", "--warmup-steps", "2", "--json"]) == 0
    assert draft_kl(out) < 0.5 * draft_kl(ckpt)
    source, result = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(source) == set(result)
    for name, value in source.items():
        assert torch.equal(result[name], value.float()) != ("_diff" in name), name
    assert cli.main(["train", "--base", str(ckpt), "--data", str(data), "--out", str(tmp_path / "again"),
                     "--precision", "bf16"]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{ckpt}: a Qwen3.5 base trains in float32, "
                                                    "without --precision bf16 (not built yet)")
    trained_docs, trained = decode(convert_checkpoint(out, merged_out=tmp_path / "trained.gguf", outtype="f32",
                                                      progress=False)["merged"])
    assert trained_docs == docs
    assert trained > untrained + 1.0, (untrained, trained)


def test_a_qwen35_run_resumes_exactly_and_evaluates(user_bases, tmp_path):
    """The Qwen3.5 trainer runs in train.loop's loop like the other bases: a run stopped at step 2 (Ctrl-C) and
    resumed ends with the twins of an uninterrupted one, bit for bit; --eval-data logs held-out acceptance."""
    from pyorthrus.train.config import TrainConfig
    from pyorthrus.train.loop import train

    rng = np.random.default_rng(11)
    data, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path in (data, held_out):
        path.write_text("".join(json.dumps({"ids": rng.integers(0, 151000, size=40).tolist()}) + "\n"
                                for _ in range(3)))

    def config(out: str) -> TrainConfig:
        return TrainConfig(base=str(user_bases["q8_0"]), data=[str(data)], out=str(tmp_path / out), block_size=4,
                           seq_len=40, batch_size=2, max_steps=4, log_every=1, eval_data=[str(held_out)],
                           eval_every=2, progress=False)

    def interrupt(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    straight = train(config("straight"))
    assert [r["step"] for r in straight["history"] if "eval_accepted" in r] == [0, 2, 4]
    assert train(config("resumed"), on_log=interrupt)["stopped"] == "interrupted"
    resumed = train(config("resumed"), resume=True)
    assert (resumed["steps"], resumed["tokens"]) == (straight["steps"], straight["tokens"])
    a, b = (load_file(str(tmp_path / out / "model.safetensors")) for out in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory):
    """A plain Qwen3.5 as transformers saves it (Qwen3_5ForCausalLM, text-only layout), tiny and random, with the
    Qwen3 tokenizer files; and the model itself, F32."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from pyorthrus.testing.fixtures import copy_tokenizer

    torch.manual_seed(3)
    config = Qwen3_5TextConfig(vocab_size=151936, hidden_size=CONFIG.hidden, intermediate_size=CONFIG.ffn,
                               num_hidden_layers=CONFIG.layers, num_attention_heads=CONFIG.heads,
                               num_key_value_heads=CONFIG.kv_heads, head_dim=CONFIG.head_dim,
                               linear_conv_kernel_dim=CONFIG.conv_kernel, linear_key_head_dim=CONFIG.state,
                               linear_value_head_dim=CONFIG.state, linear_num_key_heads=CONFIG.groups,
                               linear_num_value_heads=CONFIG.value_heads, tie_word_embeddings=True,
                               rope_parameters={"rope_type": "default", "rope_theta": 1e7,
                                                "partial_rotary_factor": CONFIG.rope_dims / CONFIG.head_dim})
    model = Qwen3_5ForCausalLM(config).float().eval()
    with torch.no_grad():  # away from the init (zero norm offsets, ...): every tensor matters
        for name, p in model.named_parameters():
            p.normal_(0, 1.0 if "embed" in name else 0.1)
            if name.endswith("linear_attn.norm.weight"):  # the DeltaNet output norm scales by w, not (1 + w)
                p.add_(1.0)
    out = tmp_path_factory.mktemp("qwen35-plain") / "Qwen3.5-tiny"
    model.save_pretrained(out)
    copy_tokenizer(out)
    return out, model


def test_a_plain_qwen35_trains_into_a_checkpoint_convert_takes(plain_base, tmp_path):
    """`pyorthrus train --base` on a plain Qwen3.5 (not an Orthrus checkpoint): the twins start as copies of its AR
    weights, as the reference initialises them, and the result is a checkpoint in the reference's format (mask: the
    first id past the tokenizer's, as the reference picks Qwen3's) that converts and decodes exactly as AR. On the
    way, the PyTorch reference's AR view equals transformers' own Qwen3.5 (its chunked delta rule against the
    reference's per-token one: within 1e-4 of the logits' scale), and the multimodal layout (text_config,
    model.language_model.*, a vision tower and an MTP head) gives the same model as the text-only one."""
    from pyorthrus.formats import qwen35_twin_names
    from pyorthrus.reference_qwen35 import orthrus_from_base

    base, hf_model = plain_base
    ids = [9707, 11, 1879, 0, 2, 3, 45, 1000, 77, 5, 6, 7, 8, 151000]
    ref = orthrus_from_base(base, 8, 151669)
    with torch.no_grad():
        want, got = hf_model(torch.tensor([ids])).logits[0], ref.forward_ar(ids, ref.new_cache())
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())  # measured: 2e-5

    multimodal = tmp_path / "Qwen3.5-tiny-vl"
    multimodal.mkdir()
    text_config = json.loads((base / "config.json").read_text())
    (multimodal / "config.json").write_text(json.dumps({"model_type": "qwen3_5", "text_config": text_config,
                                                        "vision_config": {"depth": 1}}))
    tensors = {name.replace("model.", "model.language_model.", 1): t
               for name, t in load_file(str(base / "model.safetensors")).items()}
    save_file({**tensors, "model.visual.patch_embed.proj.weight": torch.zeros(4, 4),
               "mtp.fc.weight": torch.zeros(4, 4)}, str(multimodal / "model.safetensors"))
    assert set(orthrus_from_base(multimodal, 8, 151669).w) == set(ref.w)

    rng = np.random.default_rng(7)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"ids": [int(t) for t in rng.integers(0, 151000, size=24)]}) + "\n"
                            for _ in range(2)))
    out = tmp_path / "trained"
    assert cli.main(["train", "--base", str(base), "--data", str(data), "--out", str(out), "-K", "8", "--seq-len",
                     "24", "--batch-size", "2", "--max-steps", "3", "--json"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["block_size"], config["mask_token_id"]) == ("orthrus_qwen3_5", 8, 151669)
    source, result = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(result[name], value) for name, value in source.items())
    assert set(result) - set(source) == set(qwen35_twin_names(ref.cfg))  # 6 per attention layer, 9 per DeltaNet
    merged = convert_checkpoint(out, merged_out=tmp_path / "trained.gguf", outtype="f32", progress=False)["merged"]
    with Orthrus(merged, n_ctx=256) as model:
        for prompt in PROMPTS:
            got = model.generate(prompt, max_tokens=24, block_size=8)
            assert got.tokens == model.ar_view().generate(prompt, max_tokens=24).tokens and got.stats.n_cycles > 0
