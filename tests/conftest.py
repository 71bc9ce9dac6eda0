"""Shared fixtures: the real SmolLM2 model and the installed, patched llama.cpp."""
from __future__ import annotations

from pyorthrus.testing import process

process.configure()  # before anything imports llama_cpp

import pytest  # noqa: E402

from pyorthrus import assets  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_path():
    return assets.smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """One loaded SmolLM2-135M Q4_1 shared by the tests that only read from it (greedy, fresh context state), with
    flash attention on, as Orthrus's default."""
    import llama_cpp

    return llama_cpp.Llama(str(smollm2_path), n_ctx=512, n_threads=2, seed=0, flash_attn=True, verbose=False)


@pytest.fixture(scope="module")
def model(smollm2_path):
    """SmolLM2 in the ctypes harness, for the C-level tests (a module may define its own)."""
    from pyorthrus.testing.harness import Model

    m = Model(smollm2_path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def adapter(model):
    """The shipped adapter loaded onto `model` (a module may define its own, e.g. an identity adapter)."""
    from pyorthrus import _lib

    ad = model.load_adapter(assets.default_adapter())
    assert ad, _lib.last_error()
    yield ad
    _lib.llama_adapter_orthrus_free(ad)


@pytest.fixture(scope="module", params=[False, True], ids=["fa-off", "fa-on"])
def ctx(request, model, adapter):
    """A harness context on the test module's `model` fixture with its `adapter` fixture attached, flash attention
    off and on (tests/test_llama_orthrus*.py)."""
    from pyorthrus import _lib
    from pyorthrus.testing.harness import Context

    c = Context(model, flash_attn=request.param)
    assert _lib.llama_set_adapter_orthrus(c.ptr, adapter) == 0
    yield c
    _lib.llama_set_adapter_orthrus(c.ptr, None)
    c.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For the PyTorch test modules: their matrices are tiny, so OpenMP hand-offs cost more than the work (and
    2-core CI machines are shared); run single-threaded and restore the setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _user_files(out, write_checkpoint) -> dict:
    """A plain base GGUF made the way community files are made (the patched tree's convert_hf_to_gguf.py on the
    base weights of an upstream-format Orthrus checkpoint, real Qwen3 tokenizer), quantized to Q8_0 and Q4_K_M by
    llama_model_quantize, and the adapter-only GGUF that `pyorthrus convert` makes from the same checkpoint."""
    from pyorthrus import cli
    from pyorthrus.bench import shapes
    from pyorthrus.convert.checkpoint import OrthrusCheckpoint
    from pyorthrus.convert.hf_base import convert_base_to_gguf

    ckpt = write_checkpoint(out / "Orthrus-tiny")
    files = {"checkpoint": ckpt, "f32": convert_base_to_gguf(OrthrusCheckpoint(ckpt), "f32", out),
             "adapter": out / "orthrus-tiny.gguf"}
    assert cli.main(["convert", str(ckpt), "--adapter-out", str(files["adapter"]), "--outtype", "f32"]) == 0
    for weight_type in ("q8_0", "q4_k_m"):
        files[weight_type] = shapes.quantize_gguf(files["f32"], out / f"base.{weight_type}.gguf", weight_type,
                                                  threads=2)
    return files


# Widths are multiples of 256 so that Q4_K_M really stores K-quants; the output matrix is untied, as in Qwen3-8B
# (tied random embeddings would make every token predict itself with certainty).
JOURNEY_SHAPE = dict(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def qwen3_journey(tmp_path_factory):
    """What a Qwen3 user holds (issue 16): a plain `qwen3` base GGUF (F32, Q8_0, Q4_K_M) and an adapter file."""
    from pyorthrus.testing import fixtures

    return _user_files(tmp_path_factory.mktemp("qwen3-journey"),
                       lambda d: fixtures.write_tiny_orthrus_qwen3(d, seed=31, head_dim=64, **JOURNEY_SHAPE))


@pytest.fixture(scope="session")
def qwen2_journey(tmp_path_factory):
    """The same for a Qwen2/Qwen2.5 base (architecture `qwen2`: q/k/v biases, no q/k norms)."""
    from pyorthrus.testing import fixtures

    return _user_files(tmp_path_factory.mktemp("qwen2-journey"),
                       lambda d: fixtures.write_tiny_orthrus_qwen2(d, seed=33, **JOURNEY_SHAPE))
