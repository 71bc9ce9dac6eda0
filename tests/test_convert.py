"""HF -> GGUF conversion (pyorthrus.convert) and `inspect`, on real files: tiny Orthrus fixtures and SmolLM2 Q4_1."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pyorthrus import assets, reference
from pyorthrus.testing import fixtures
from pyorthrus.convert import cli as convert_cli
from pyorthrus.convert import convert_checkpoint
from pyorthrus.convert.base_gguf import copied_metadata, planned_base_tensors
from pyorthrus.convert.gguf_out import PlannedTensor, write_gguf
from pyorthrus.convert.hf_base import tokenizer_config_as_mapping
from pyorthrus.errors import PyorthrusError
from pyorthrus import inspect as inspect_verb
from pyorthrus.gguf_meta import inspect_gguf, open_reader

GGML = gguf.GGMLQuantizationType
TORCH_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
SMOLLM2_MASK_TOKEN_ID = 0  # SmolLM2 has no mask token; the tests only need a valid row


# -- fixtures ---------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory):
    """Upstream layout, bf16, sharded in 3 files with an index."""
    return fixtures.write_tiny_orthrus_qwen3(tmp_path_factory.mktemp("qwen3"), seed=11, shards=3)


@pytest.fixture(scope="session")
def llama_ckpt(tmp_path_factory):
    """Llama base, f32, single file."""
    return fixtures.write_tiny_orthrus_llama(tmp_path_factory.mktemp("llama"), seed=12)


@pytest.fixture(scope="session")
def llama_bias_ckpt(tmp_path_factory):
    """Llama base with q/k/v/o biases (llama.cpp permutes the Q/K biases like the weights)."""
    return fixtures.write_tiny_orthrus_llama(tmp_path_factory.mktemp("llama-bias"), seed=14, attention_bias=True)


@pytest.fixture(scope="session")
def smollm2_diff_ckpt(tmp_path_factory):
    return fixtures.write_diff_only_for_gguf(tmp_path_factory.mktemp("smollm2-diff"), assets.smollm2_gguf(),
                                             mask_token_id=SMOLLM2_MASK_TOKEN_ID, block_size=16, seed=13)


@pytest.fixture(scope="session")
def smollm2_outputs(smollm2_diff_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-out")
    convert_checkpoint(smollm2_diff_ckpt, adapter_out=out / "adapter.gguf", merged_out=out / "merged.gguf",
                       base=assets.smollm2_gguf(), progress=False)
    return out / "adapter.gguf", out / "merged.gguf"


@pytest.fixture(scope="session")
def merged_without_base(qwen3_ckpt, llama_ckpt, tmp_path_factory):
    """Merged files built by the vendored llama.cpp converter plus ours (one conversion per base, shared)."""
    out = tmp_path_factory.mktemp("merged")
    paths = {}
    for name, ckpt in (("qwen3", qwen3_ckpt), ("llama", llama_ckpt)):
        paths[name] = out / f"{name}.gguf"
        convert_checkpoint(ckpt, merged_out=paths[name], outtype="f32", progress=False)
    return paths


def no_leftovers(directory: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".") and out.name in p.name]


def hf_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    return reference.read_hf_tensors(ckpt)


def gguf_to_hf_name(name: str) -> str:
    _, layer, tensor, kind = name.split(".")
    hf = {"attn_q_diff": "q_proj_diff", "attn_k_diff": "k_proj_diff", "attn_v_diff": "v_proj_diff",
          "attn_output_diff": "o_proj_diff", "attn_q_norm_diff": "q_norm_diff", "attn_k_norm_diff": "k_norm_diff"}
    return f"model.layers.{layer}.self_attn.{hf[tensor]}.{kind}"


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


# -- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_name", ["qwen3_ckpt", "llama_ckpt", "llama_bias_ckpt"])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_adapter_round_trip(ckpt_name, outtype, request, tmp_path):
    ckpt = request.getfixturevalue(ckpt_name)
    out = tmp_path / "adapter.gguf"
    convert_checkpoint(ckpt, adapter_out=out, outtype=outtype, progress=False)
    reader = gguf.GGUFReader(str(out))
    config = json.loads((ckpt / "config.json").read_text())
    cfg = reference.config_from_hf(config)
    assert fields(reader) == {
        "general.architecture": cfg.base, "general.type": "adapter", "adapter.type": "orthrus",
        "general.name": f"Orthrus adapter ({ckpt.name})",
        "orthrus.diffusion.block_size": config["block_size"], "tokenizer.ggml.mask_token_id": config["mask_token_id"],
        "orthrus.base.block_count": cfg.num_layers, "orthrus.base.embedding_length": cfg.hidden_size,
        "orthrus.base.head_count": cfg.num_heads, "orthrus.base.head_count_kv": cfg.num_kv_heads,
        "orthrus.base.vocab_size": cfg.vocab_size}
    source = hf_tensors(ckpt)
    per_layer = (6 if cfg.has_qk_norm else 4) + len(cfg.biased_projections)
    assert len(reader.tensors) == per_layer * cfg.num_layers
    for tensor in reader.tensors:
        expected = source[gguf_to_hf_name(tensor.name)]
        heads = reference.llama_qk_permute_heads(cfg, tensor.name)
        if heads:  # the file holds llama.cpp's row order; undo it to compare with the HF tensor
            expected = reference.permute_qk_rows(expected, heads)
        if expected.dim() == 1:  # norms stay f32 whatever the outtype
            assert tensor.tensor_type == GGML.F32
            assert np.array_equal(np.asarray(tensor.data), expected.float().numpy())
        elif outtype == "q8_0":
            assert tensor.tensor_type == GGML.Q8_0
            value = reference.gguf_tensor_f32(tensor)
            src = expected.float().numpy()
            block_max = np.abs(src.reshape(-1, 32)).max(axis=1, keepdims=True)
            bound = block_max / 127 * 0.5 + block_max * 2.0**-10  # half a step + the f16 rounding of the scale
            assert (np.abs(value - src).reshape(-1, 32) <= bound).all()
        else:
            want = expected.to(TORCH_TYPES[outtype]).contiguous()
            assert tensor.tensor_type == GGML[outtype.upper()]
            assert np.asarray(tensor.data).tobytes() == want.view(torch.uint8).numpy().tobytes()


def test_merged_qwen3_without_base(merged_without_base, qwen3_ckpt):
    """Vendored convert_hf_to_gguf.py for the base, renamed to the community `orthrus` arch, plus ours; the
    reference loaded from the merged GGUF computes exactly what it computes from the checkpoint (both views)."""
    reader = open_reader(merged_without_base["qwen3"])
    meta = fields(reader)
    assert meta["general.architecture"] == "orthrus"
    assert meta["orthrus.block_count"] == 2 and meta["orthrus.diffusion.block_size"] == 8
    assert meta["tokenizer.ggml.mask_token_id"] == fixtures.QWEN3_MASK_TOKEN_ID
    assert not [k for k in meta if k.startswith("qwen3.")]
    assert sum("_diff." in t.name for t in reader.tensors) == 12
    assert meta["tokenizer.ggml.tokens"][151645] == "<|im_end|>"
    assert_same_model(reference.load_hf(qwen3_ckpt), reference.load_gguf(reader))


def test_merged_llama_without_base_uses_llama_cpp_permutation(merged_without_base, llama_ckpt):
    """llama.cpp permutes the base Q/K rows, we permute the diff Q/K rows: the reference un-permutes both the same
    way, so exact equality with the checkpoint shows our permutation is llama.cpp's."""
    reader = open_reader(merged_without_base["llama"])
    assert fields(reader)["general.architecture"] == "llama"
    assert fields(reader)["llama.diffusion.block_size"] == 8
    assert_same_model(reference.load_hf(llama_ckpt), reference.load_gguf(reader))


def assert_same_model(a: reference.OrthrusModel, b: reference.OrthrusModel) -> None:
    ids = torch.arange(1000, 1020)
    block = [7] + [fixtures.QWEN3_MASK_TOKEN_ID] * 7
    with torch.no_grad():
        cache_a, cache_b = a.new_cache(), b.new_cache()
        assert torch.equal(a.forward_ar(ids, cache_a), b.forward_ar(ids, cache_b))
        assert torch.equal(a.forward_draft(block, cache_a), b.forward_draft(block, cache_b))


def test_merged_with_base_keeps_smollm2_byte_identical(smollm2_outputs):
    base = open_reader(assets.smollm2_gguf())
    merged = open_reader(smollm2_outputs[1])
    merged_tensors = {t.name: t for t in merged.tensors}
    for tensor in base.tensors:
        copy = merged_tensors.pop(tensor.name)
        assert copy.tensor_type == tensor.tensor_type and list(copy.shape) == list(tensor.shape)
        assert np.asarray(copy.data).tobytes() == np.asarray(tensor.data).tobytes(), tensor.name
    assert sorted(merged_tensors) == sorted(t.name for t in open_reader(smollm2_outputs[0]).tensors)
    assert len(merged_tensors) == 4 * 30
    base_meta, merged_meta = fields(base), fields(merged)
    assert merged_meta.pop("llama.diffusion.block_size") == 16
    assert merged_meta.pop("tokenizer.ggml.mask_token_id") == SMOLLM2_MASK_TOKEN_ID
    assert merged_meta == base_meta


def test_smollm2_adapter_loads_in_reference(smollm2_outputs, smollm2_diff_ckpt):
    """Base Q4_1 GGUF + our adapter in the reference: the diff weights come back exactly as trained (f32), the
    AR weights stay the base's; the merged file carries the very same diff tensor bytes."""
    model = reference.load_gguf(assets.smollm2_gguf(), smollm2_outputs[0])
    assert model.cfg.block_size == 16 and model.cfg.mask_token_id == SMOLLM2_MASK_TOKEN_ID
    source = load_file(str(smollm2_diff_ckpt / "model.safetensors"))
    params = dict(model.named_parameters())
    for own, hf in reference.hf_names(model).items():
        if "_diff." in hf:
            assert torch.equal(params[own], source[hf]), hf
    assert not torch.equal(model.layers[0].attn_diff.q_proj.weight, model.layers[0].attn.q_proj.weight)
    adapter = {t.name: t for t in open_reader(smollm2_outputs[0]).tensors}
    for tensor in open_reader(smollm2_outputs[1]).tensors:
        if "_diff." in tensor.name:
            assert np.asarray(tensor.data).tobytes() == np.asarray(adapter[tensor.name].data).tobytes()


def test_reference_refuses_an_adapter_for_another_base(small_ckpt, tmp_path):
    adapter = tmp_path / "qwen3-adapter.gguf"
    convert_checkpoint(small_ckpt, adapter_out=adapter, progress=False)
    with pytest.raises(PyorthrusError, match=f"{adapter} does not fit .*: architecture is qwen3 in the adapter, llama"):
        reference.load_gguf(assets.smollm2_gguf(), adapter)


# -- streaming --------------------------------------------------------------------------------------------------


STREAMING_PROBE = """
import sys
from pyorthrus.convert import convert_checkpoint
from pyorthrus.convert.checkpoint import OrthrusCheckpoint
from pyorthrus.convert.gguf_out import bf16_bits_to_f32

def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

ckpt_dir, out, mode = sys.argv[1:]
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
    fh.write("5")
before = status_kib("VmRSS")
if mode == "convert":
    convert_checkpoint(ckpt_dir, adapter_out=out, progress=False)
else:  # control: what holding every diff tensor at once (as f32) costs
    ckpt = OrthrusCheckpoint(ckpt_dir)
    held = [bf16_bits_to_f32(ckpt.tensor(d.hf.name)) for d in ckpt.diff_tensors]
print((status_kib("VmHWM") - before) * 1024, "torch" in sys.modules)
"""


def test_sharded_checkpoint_is_streamed(tmp_path):
    """Peak RSS of an adapter conversion of a 4-shard checkpoint grows by far less than its diff tensors take as
    f32 (64 MB): tensors are read and converted one at a time. The control run, which holds them all, shows the
    measurement would catch an implementation that does not stream. (safetensors memory-maps shards, so merely
    opening all of them costs nothing; materialising tensors is what must stay bounded.) The conversion also runs
    without importing torch: adapters need only numpy, gguf and safetensors' header format."""
    ckpt = fixtures.write_tiny_orthrus_qwen3(tmp_path / "big", seed=5, hidden_size=512, num_layers=16,
                                            num_heads=8, num_kv_heads=8, head_dim=64, intermediate_size=64, shards=4)
    assert len(list(ckpt.glob("*.safetensors"))) == 4
    diff_f32_bytes = 16 * 4 * 512 * 512 * 4

    def peak_growth(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", STREAMING_PROBE, str(ckpt), str(tmp_path / "a.gguf"), mode],
                                capture_output=True, text=True, check=True)
        growth, torch_imported = result.stdout.split()[-2:]
        assert torch_imported == "False"
        return int(growth)

    assert peak_growth("convert") < diff_f32_bytes / 4
    assert peak_growth("hold-all") > diff_f32_bytes / 2
    assert len(gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors) == 16 * 6


# -- bad inputs: one-line message naming the file, no output left behind ----------------------------------------


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """Single-file Qwen3-layout checkpoint that the bad-input tests copy and damage."""
    return fixtures.write_tiny_orthrus_qwen3(tmp_path_factory.mktemp("small"), seed=21)


def damaged_copy(src: Path, dst: Path, config_edit=None, tensors_edit=None) -> Path:
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(src / "model.safetensors"))
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def expect_failure(match: str, out: Path, **kwargs) -> str:
    with pytest.raises(PyorthrusError) as info:
        convert_checkpoint(**kwargs, progress=False)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    no_leftovers(out.parent, out)
    return message


def test_not_an_orthrus_checkpoint(small_ckpt, tmp_path):
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt", config_edit=lambda c: c.update(model_type="qwen3"))
    out = tmp_path / "a.gguf"
    message = expect_failure("not an Orthrus checkpoint", out, ckpt_dir=ckpt, adapter_out=out)
    assert "config.json" in message and "'qwen3'" in message


def test_missing_diff_tensor(small_ckpt, tmp_path):
    name = "model.layers.1.self_attn.k_proj_diff.weight"
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt", tensors_edit=lambda t: t.pop(name))
    out = tmp_path / "a.gguf"
    message = expect_failure(f"missing diff tensor {name} (layer 1)", out, ckpt_dir=ckpt, adapter_out=out)
    assert str(ckpt) in message


def test_extra_diff_tensor(small_ckpt, tmp_path):
    def add_layer_2(tensors):
        tensors["model.layers.2.self_attn.q_proj_diff.weight"] = tensors["model.layers.1.self_attn.q_proj_diff.weight"].clone()
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt", tensors_edit=add_layer_2)
    out = tmp_path / "a.gguf"
    expect_failure("unexpected diff tensor model.layers.2.self_attn.q_proj_diff.weight", out,
                   ckpt_dir=ckpt, adapter_out=out)


def test_diff_tensor_shape_mismatch(small_ckpt, tmp_path):
    name = "model.layers.0.self_attn.v_proj_diff.weight"
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt", tensors_edit=lambda t: t.update({name: t[name][:-1]}))
    out = tmp_path / "a.gguf"
    expect_failure(f"{name} has shape [31, 32], expected [32, 32]", out, ckpt_dir=ckpt, adapter_out=out)


def test_diff_tensor_dtype_mismatch(small_ckpt, tmp_path):
    name = "model.layers.0.self_attn.o_proj_diff.weight"
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt",
                        tensors_edit=lambda t: t.update({name: t[name].to(torch.float16)}))
    out = tmp_path / "a.gguf"
    expect_failure(f"{name} is F16[32, 64] but its base tensor is BF16[32, 64]", out, ckpt_dir=ckpt, adapter_out=out)


def test_truncated_safetensors(small_ckpt, tmp_path):
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt")
    shard = ckpt / "model.safetensors"
    os.truncate(shard, shard.stat().st_size - 1000)
    out = tmp_path / "a.gguf"
    expect_failure(f"{shard}: truncated safetensors file", out, ckpt_dir=ckpt, adapter_out=out)


def test_truncated_shard_of_a_sharded_checkpoint(tmp_path):
    ckpt = fixtures.write_tiny_orthrus_qwen3(tmp_path / "ckpt", seed=22, shards=3)
    shard = ckpt / "model-00002-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 1000)
    out = tmp_path / "a.gguf"
    expect_failure(f"{shard}: truncated safetensors file", out, ckpt_dir=ckpt, adapter_out=out)


def test_corrupt_safetensors(small_ckpt, tmp_path):
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt")
    shard = ckpt / "model.safetensors"
    with shard.open("r+b") as fh:
        fh.seek(8)
        fh.write(b"\x00garbage")
    out = tmp_path / "a.gguf"
    expect_failure(f"{shard}: corrupt safetensors file", out, ckpt_dir=ckpt, adapter_out=out)


def test_overlapping_tensor_data_is_corrupt(small_ckpt, tmp_path):
    """A header whose byte ranges overlap (valid JSON, data within the file) is refused before anything is written."""
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt")
    shard = ckpt / "model.safetensors"
    raw = shard.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    name = "model.layers.1.self_attn.k_norm_diff.weight"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [0, end - start]
    new_header = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
    assert len(new_header) == header_len
    shard.write_bytes(raw[:8] + new_header + raw[8 + header_len:])
    out = tmp_path / "a.gguf"
    expect_failure(f"{shard}: corrupt safetensors file (ValueError: invalid data offsets for tensor", out,
                   ckpt_dir=ckpt, adapter_out=out)


def test_failure_while_writing_leaves_no_output_and_no_temp_file(small_ckpt, tmp_path):
    """Tensor values are checked as they stream into the output: a NaN in the last diff tensor fails the conversion
    after the output file was started, and neither it nor its temporary file remains."""
    name = "model.layers.1.self_attn.k_norm_diff.weight"

    def poison(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name][3] = float("nan")
    ckpt = damaged_copy(small_ckpt, tmp_path / "ckpt", tensors_edit=poison)
    out = tmp_path / "a.gguf"
    expect_failure(f"{ckpt / 'model.safetensors'}: tensor {name} contains NaN or infinite values", out,
                   ckpt_dir=ckpt, adapter_out=out)


def test_output_exists(small_ckpt, tmp_path):
    out = tmp_path / "a.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(PyorthrusError, match="output exists"):
        convert_checkpoint(small_ckpt, adapter_out=out, progress=False)
    assert out.read_bytes() == b"keep me"
    convert_checkpoint(small_ckpt, adapter_out=out, force=True, progress=False)
    assert inspect_gguf(out)["type"] == "adapter"


def test_diff_only_merged_needs_base(smollm2_diff_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    expect_failure("diff-only checkpoint; a merged file needs --base", out,
                   ckpt_dir=smollm2_diff_ckpt, merged_out=out)


def write_fake_base(path: Path, arch: str = "llama", vocab: int = fixtures.QWEN3_VOCAB_SIZE, **keys) -> Path:
    """A minimal base GGUF carrying only what validation reads: hyperparameters and the token embedding."""
    values = {"block_count": 2, "embedding_length": 32, "attention.head_count": 4, "attention.head_count_kv": 2}
    values.update({k.replace("__", "."): v for k, v in keys.items()})
    kv = [(f"{arch}.{k}", v, gguf.GGUFValueType.UINT32, None) for k, v in values.items()]
    embd = PlannedTensor("token_embd.weight", (vocab, 32), GGML.F16, vocab * 32 * 2,
                         lambda: np.zeros((vocab, 32), np.float16))
    write_gguf(path, arch, kv, [embd], progress=False)
    return path


@pytest.mark.parametrize("base_kwargs, match", [
    (dict(arch="qwen3"), "architecture 'qwen3' does not match the checkpoint's base 'llama'"),
    (dict(block_count=3), "block_count is 3, the checkpoint has 2"),
    (dict(embedding_length=64), "embedding_length is 64, the checkpoint has 32"),
    (dict(attention__head_count=8), "head_count is 8, the checkpoint has 4"),
    (dict(attention__head_count_kv=4), "head_count_kv is 4, the checkpoint has 2"),
    (dict(vocab=1000), "vocab size is 1000, the checkpoint has 151936"),
])
def test_base_mismatch(llama_ckpt, tmp_path, base_kwargs, match):
    base = write_fake_base(tmp_path / "base.gguf", **base_kwargs)
    out = tmp_path / "m.gguf"
    message = expect_failure(match, out, ckpt_dir=llama_ckpt, merged_out=out, base=base)
    assert message.startswith(str(base))


def test_base_matching_the_fake_passes_validation(llama_ckpt, tmp_path):
    """Control for test_base_mismatch: the unmodified fake base is accepted."""
    base = write_fake_base(tmp_path / "base.gguf")
    out = tmp_path / "m.gguf"
    convert_checkpoint(llama_ckpt, merged_out=out, base=base, progress=False)
    assert inspect_gguf(out)["type"] == "merged"


def test_truncated_base_gguf(llama_ckpt, tmp_path):
    base = write_fake_base(tmp_path / "base.gguf")
    os.truncate(base, base.stat().st_size // 2)
    out = tmp_path / "m.gguf"
    expect_failure(f"{base}: corrupt or truncated GGUF", out, ckpt_dir=llama_ckpt, merged_out=out, base=base)


def test_corrupt_base_gguf(llama_ckpt, tmp_path):
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + os.urandom(64))
    out = tmp_path / "m.gguf"
    expect_failure(f"{base}: corrupt or truncated GGUF", out, ckpt_dir=llama_ckpt, merged_out=out, base=base)


def test_base_with_diff_tensors_is_refused(smollm2_outputs, smollm2_diff_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    expect_failure("already contains Orthrus diff tensors", out, ckpt_dir=smollm2_diff_ckpt, merged_out=out,
                   base=smollm2_outputs[1])


# -- tokenizer config ---------------------------------------------------------------------------------------------


def test_extra_special_tokens_list_is_read_as_mapping_without_editing_user_files(qwen3_ckpt, merged_without_base):
    """The list form is folded into `additional_special_tokens` in the converter's temporary view only (the merged
    conversion of this checkpoint, with the real Qwen3 tokenizer, is checked in test_merged_qwen3_without_base)."""
    user_file = qwen3_ckpt / "tokenizer_config.json"
    config = json.loads(user_file.read_text())
    assert isinstance(config["extra_special_tokens"], list) and "additional_special_tokens" not in config
    fixed = tokenizer_config_as_mapping(config)
    assert "extra_special_tokens" not in fixed
    assert fixed["additional_special_tokens"] == config["extra_special_tokens"]
    # The merged conversion (session fixture) ran on this checkpoint; the user's file is as the fixture wrote it.
    assert json.loads(user_file.read_text()) == config


# -- CLI and inspect ----------------------------------------------------------------------------------------------


def run_verb(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return module.run(parser.parse_args(argv))


def test_convert_cli_json(small_ckpt, tmp_path, capsys):
    out = tmp_path / "a.gguf"
    assert run_verb(convert_cli, [str(small_ckpt), "--adapter-out", str(out), "--outtype", "q8_0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["adapter"] == str(out) and summary["diff_tensors"] == 12 and summary["outtype"] == "q8_0"


def test_convert_script_reports_one_line_error(small_ckpt, tmp_path):
    out = tmp_path / "a.gguf"
    out.write_bytes(b"")
    script = Path(convert_cli.__file__)
    result = subprocess.run([sys.executable, str(script), str(small_ckpt), "--adapter-out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"pyorthrus convert: error: {out}: output exists (use --force to overwrite)"]


def test_inspect_adapter_merged_and_model(smollm2_outputs, capsys):
    adapter = inspect_gguf(smollm2_outputs[0])
    assert adapter["type"] == "adapter" and adapter["architecture"] == "llama"
    assert adapter["block_size"] == 16 and adapter["mask_token_id"] == SMOLLM2_MASK_TOKEN_ID
    assert adapter["tensor_count"] == 120 and adapter["tensor_types"] == {"F32": 120}
    assert adapter["diff_coverage"]["complete_layers"] == 30 and adapter["diff_coverage"]["missing"] == {}
    assert adapter["base"]["block_count"] == 30 and adapter["file_size"] == smollm2_outputs[0].stat().st_size
    merged = inspect_gguf(smollm2_outputs[1])
    assert merged["type"] == "merged" and merged["tensor_count"] == 272 + 120
    assert merged["tensor_types"]["Q4_1"] == 210 and merged["block_size"] == 16
    model = inspect_gguf(assets.smollm2_gguf())
    assert model["type"] == "model" and model["diff_coverage"]["diff_tensors"] == 0
    assert run_verb(inspect_verb, [str(smollm2_outputs[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == adapter
    assert run_verb(inspect_verb, [str(smollm2_outputs[0])]) == 0
    text = capsys.readouterr().out
    assert "type:          adapter" in text and "30 complete" in text


def test_inspect_reports_missing_diff_tensors(small_ckpt, tmp_path):
    full = tmp_path / "a.gguf"
    convert_checkpoint(small_ckpt, adapter_out=full, progress=False)
    reader = gguf.GGUFReader(str(full))
    partial = tmp_path / "partial.gguf"
    kept = [t for t in planned_base_tensors(reader) if t.name != "blk.1.attn_v_diff.weight"]
    write_gguf(partial, "qwen3", copied_metadata(reader), kept, progress=False)
    coverage = inspect_gguf(partial)["diff_coverage"]
    assert coverage["complete_layers"] == 1 and coverage["missing"] == {"1": ["attn_v_diff"]}


def test_inspect_corrupt_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(PyorthrusError, match=f"{bad}: corrupt or truncated GGUF"):
        inspect_gguf(bad)


def test_the_fast_reader_reads_what_gguf_py_reads():
    """open_reader parses through a plain-ndarray view of the file (issue 36: a Qwen vocabulary took gguf-py 7 s
    per open): every field and tensor of the real SmolLM2 file comes out as gguf.GGUFReader has it."""
    path = assets.smollm2_gguf()
    fast, plain = open_reader(path), gguf.GGUFReader(str(path))
    assert type(fast) is not gguf.GGUFReader
    assert list(fast.fields) == list(plain.fields)
    for key, field in plain.fields.items():
        assert fast.fields[key].types == field.types and fast.fields[key].contents() == field.contents(), key
    assert [(t.name, t.tensor_type, list(t.shape), int(t.data_offset)) for t in fast.tensors] \
        == [(t.name, t.tensor_type, list(t.shape), int(t.data_offset)) for t in plain.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(fast.tensors[:3], plain.tensors[:3]))
