"""Untrusted files (issue 18): a slice of bench/fuzz.py, and each input the fuzzer found that crashed the process,
rebuilt here from a valid file by the same one-field change."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from pyorthrus.testing.gguf_edits import offset_in_file, with_metadata_type, with_metadata_value, with_tensor_type

REPO = Path(__file__).resolve().parent.parent


def test_fuzz_slice_finds_no_crash_hang_or_sanitizer_report(tmp_path):
    """15 mutants per target (adapter, merged, checkpoint, hparams) on the installed build: every one is refused
    cleanly or loads and decodes. The full runs (14,000 mutants and the whole hparams sweep) are bench/fuzz.py; their
    reports are in bench/results/. A merged or hparams mutant loads a model with the 151k-token Qwen3 vocabulary
    (about 2.7 s on a 2-core EPYC, after 25 s of making the seeds): the time limit leaves room for a machine 2x
    slower than that, where 30 mutants in 2.5 minutes left the merged target only 5."""
    out = tmp_path / "fuzz"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--seed", "1", "--iterations", "15",
                             "--minutes", "4", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    for target, r in report["targets"].items():
        assert r["mutants"] >= 10, (target, r)  # the slice really ran (the time limit was not all spent on setup)
        assert r["counts"]["clean_error"] > 0, (target, r)  # and the mutations were really bad input


def _with_a_repeated_token(src: Path, dst: Path) -> None:
    """A copy of src whose vocabulary lists one token string twice: a later token of the same length as an
    earlier one gets its bytes (the change bench/fuzz.py made)."""
    reader = gguf.GGUFReader(src)
    field = reader.fields["tokenizer.ggml.tokens"]
    first_of_length: dict[int, bytes] = {}
    for i in field.data:
        text = bytes(field.parts[i])
        earlier = first_of_length.setdefault(len(text), text)
        if earlier != text:
            offset = offset_in_file(reader, field.parts[i])
            data = bytearray(src.read_bytes())
            data[offset:offset + len(text)] = earlier
            dst.write_bytes(data)
            return
    raise AssertionError("no two token strings of equal length")


def _generate_error(model: Path) -> str:
    """The one line `pyorthrus generate` prints for a model llama.cpp refuses (after checking it was refused)."""
    result = subprocess.run([sys.executable, "-m", "pyorthrus", "generate", "-m", str(model), "--mode", "ar", "-p",
                             "hi", "-n", "2"], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr[-2000:])  # not -6 (SIGABRT)
    return lines[0]


def test_a_vocabulary_with_a_repeated_token_is_refused_not_an_abort(qwen3_journey, tmp_path):
    """Found by bench/fuzz.py (merged target): llama.cpp's vocabulary loader asserted that token strings are
    distinct and aborted the process; with patch 0014 the model is refused with a message."""
    bad = tmp_path / "repeated-token.gguf"
    _with_a_repeated_token(qwen3_journey["f32"], bad)
    line = _generate_error(bad)
    assert re.fullmatch(rf"pyorthrus generate: error: {re.escape(str(bad))}: llama.cpp could not load it \(the "
                        r"vocabulary lists (\d+) tokens but only (\d+) distinct strings\)", line), line


@pytest.mark.parametrize("key,value,reason", [
    ("llama.block_count", 0, "hparams.n_layer_all > 0"),
    ("llama.block_count", 1 << 31, "hparams.n_layer_all <= LLAMA_MAX_LAYERS"),
    ("llama.attention.layer_norm_rms_epsilon", -1e-6, "hparams.f_norm_rms_eps >= 0.0f"),
    ("llama.attention.layer_norm_rms_epsilon", float("nan"), "std::isfinite(hparams.f_norm_rms_eps)")])
def test_a_bad_hyperparameter_is_refused_not_an_abort(smollm2_path, tmp_path, key, value, reason):
    """Found by bench/fuzz.py (merged and hparams targets): a block count of 0 or above the maximum aborted at load,
    a negative or NaN RMS-norm epsilon loaded and aborted in ggml's rms_norm at the first decode; with patch 0015
    llama.cpp refuses the file and says which check failed."""
    bad = tmp_path / "bad-hparam.gguf"
    with_metadata_value(smollm2_path, bad, key, value)
    line = _generate_error(bad)
    assert line.startswith(f"pyorthrus generate: error: {bad}: llama.cpp could not load it (invalid hyperparameters: ")
    assert reason in line, line


@pytest.mark.parametrize("edit,reason", [
    (lambda src, dst: with_tensor_type(src, dst, "token_embd.weight", 8200), "invalid ggml type 8200"),
    (lambda src, dst: with_metadata_type(src, dst, "llama.block_count", 1125), "invalid GGUF type 1125")])
def test_a_type_id_outside_its_enum_is_refused_by_name(smollm2_path, tmp_path, edit, reason):
    """Found by bench/fuzz.py under the sanitizer build: a type id outside ggml's or GGUF's enum was converted to the
    enum before the range check (undefined behaviour, reported by UBSan); patch 0016 checks the id first, and the
    one-line error names it."""
    bad = tmp_path / "bad-type.gguf"
    edit(smollm2_path, bad)
    line = _generate_error(bad)
    assert line.startswith(f"pyorthrus generate: error: {bad}: llama.cpp could not load it (") and reason in line, line


def test_a_file_type_beyond_the_enum_is_ignored_with_a_warning(smollm2_path, tmp_path):
    """Found by bench/fuzz.py under the sanitizer build (hparams target): general.file_type = 7168 was cast to
    llama_ftype (undefined behaviour, reported by UBSan). The file type is only a label: with patch 0017 llama.cpp
    warns, keeps the type it guessed from the tensors, and the model loads and decodes as before."""
    odd = tmp_path / "odd-file-type.gguf"
    with_metadata_value(smollm2_path, odd, "general.file_type", 7168)
    script = ("import sys, llama_cpp; llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=True); "
              "print(llm.tokenize(b'hi'), llm.create_completion('hi', max_tokens=2)['choices'][0]['text'] != None)")
    result = subprocess.run([sys.executable, "-c", script, str(odd)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "general.file_type 7168 is not a file type; keeping the guessed one" in result.stderr
    assert "Q4_1" in next(line for line in result.stderr.splitlines() if "file type" in line and "=" in line)


def test_a_truncated_model_names_what_llama_cpp_could_not_read(smollm2_path, tmp_path):
    """The reason llama.cpp logs for refusing a file reaches the one-line error (llama-cpp-python's own exception
    says only that loading failed)."""
    for size, reason in ((8, "failed to read header"), (1 << 20, "failed to read key-value pairs"),
                         (80 << 20, "data is not within the file bounds")):
        cut = tmp_path / f"cut-{size}.gguf"
        with open(smollm2_path, "rb") as src:
            cut.write_bytes(src.read(size))
        line = _generate_error(cut)
        assert line.startswith(f"pyorthrus generate: error: {cut}: llama.cpp could not load it (") and \
            reason in line, line


@pytest.mark.parametrize("key,value", [("vocab_size", "x"), ("num_hidden_layers", None), ("hidden_size", 2.5),
                                       ("block_size", 1 << 40), ("mask_token_id", -1), ("num_attention_heads", 0)])
def test_a_config_value_of_the_wrong_kind_is_one_line_and_writes_nothing(tmp_path, key, value):
    """Found by bench/fuzz.py (checkpoint target): config.json values of the wrong type or out of the GGUF's 32-bit
    range raised TypeError / struct.error tracebacks from deep inside the converter."""
    from pyorthrus.testing import fixtures

    ckpt = fixtures.write_tiny_orthrus_qwen3(tmp_path / "ckpt", seed=9)
    config = json.loads((ckpt / "config.json").read_text())
    config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "adapter.gguf"
    result = subprocess.run([sys.executable, "-m", "pyorthrus", "convert", str(ckpt), "--adapter-out", str(out)],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pyorthrus convert: error: {ckpt / 'config.json'}: ") and key in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == [ckpt]  # no output, no temporary file
