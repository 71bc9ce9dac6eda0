"""llama-orthrus (patch 0006), compiled by `pyorthrus build --binary` against the installed patched library and
run on the real SmolLM2 Q4_1 with the shipped adapter: its Orthrus output is its own greedy AR output and the
Python harness's, and bad input is a one-line error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyorthrus.testing.harness import Context, Model, greedy_ar

from pyorthrus import assets

PROMPT = "Question: Tom has 3 boxes of 12 pencils and gives away 5 pencils. How many are left?\nAnswer:"
N_TOKENS = 48


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("bin")
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "build", "--binary", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"llama-orthrus: {out / 'llama-orthrus'}" in result.stdout
    return out / "llama-orthrus"


def run(binary, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def generate_ids(binary, smollm2_path, *args: str) -> list[int]:
    result = run(binary, "-m", str(smollm2_path), "-a", str(assets.default_adapter()), "-p", PROMPT,
                 "-n", str(N_TOKENS), "-t", "1", "--ids", *args)
    assert result.returncode == 0, result.stderr
    return [int(t) for t in result.stdout.split()]


@pytest.mark.parametrize("fa", ["off", "on"])
def test_binary_greedy_orthrus_equals_greedy_ar(binary, smollm2_path, fa):
    ar = generate_ids(binary, smollm2_path, "--ar", "-fa", fa)
    model = Model(smollm2_path)
    ctx = Context(model, flash_attn=(fa == "on"), n_threads=1)
    try:
        assert ar == greedy_ar(ctx, model.tokenize(PROMPT), N_TOKENS)  # the binary's AR is the harness's AR
    finally:
        ctx.close()
        model.close()
    for K in ("4", "16"):
        assert generate_ids(binary, smollm2_path, "-k", K, "-fa", fa) == ar
    assert generate_ids(binary, smollm2_path, "--tree", "16", "-fa", fa) == ar  # tree verify (patch 0019)


def test_binary_prints_text_and_stats(binary, smollm2_path):
    result = run(binary, "-m", str(smollm2_path), "-a", str(assets.default_adapter()), "-p",
                 "What is the capital of France?", "--chat", "-n", "24", "-k", "8", "-t", "1")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    stats = result.stderr.strip().splitlines()[-1]
    assert stats.startswith("orthrus: ") and "K=8" in stats and "tokens/cycle" in stats
    tree = run(binary, "-m", str(smollm2_path), "-a", str(assets.default_adapter()), "-p",
               "What is the capital of France?", "--chat", "-n", "24", "--tree", "8", "-t", "1")
    assert tree.returncode == 0 and tree.stdout == result.stdout, tree.stderr
    assert "tree of 8 nodes:" in tree.stderr.strip().splitlines()[-1]


def test_binary_help(binary):
    result = run(binary, "--help")
    assert result.returncode == 0 and "--block-size" in result.stdout and "--tree N" in result.stdout


def test_binary_bad_input_is_one_line_error(binary, smollm2_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(assets.default_adapter().read_bytes()[:1000])
    cases = {
        "truncated adapter": (["-m", str(smollm2_path), "-a", str(truncated), "-p", "hi"], str(truncated)),
        "missing model": (["-m", str(tmp_path / "none.gguf"), "-p", "hi"], "none.gguf"),
        "no adapter": (["-m", str(smollm2_path), "-p", "hi"], "no diffusion-view weights"),
        "K above trained": (["-m", str(smollm2_path), "-a", str(assets.default_adapter()), "-p", "hi", "-k", "40"],
                            "exceeds the trained block size 16"),
        "bad number": (["-m", str(smollm2_path), "-n", "many"], "'many' is not an integer"),
        "negative tree": (["-m", str(smollm2_path), "--tree", "-2"], "--tree must be an integer >= 0"),
    }
    for name, (args, expected) in cases.items():
        result = run(binary, *args)
        assert result.returncode == 1, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, result.stderr)
        assert result.stdout == "", name
