"""Hybrid models (issue 37). Patch 0021 on a tiny random `qwen35` (Gated DeltaNet + gated attention, the real Qwen3.5 vocabulary): removing
the tokens of the last ubatch from a hybrid memory restores the recurrent state exactly, all of them included (an
Orthrus draft block is removed whole), and a removal the snapshots do not cover is refused instead of restoring a
stale state. Compared bitwise with a context that never decoded the removed tokens (strict CPU build)."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from pyorthrus.gguf_meta import inspect_gguf
from pyorthrus.testing.harness import Context, Model
from pyorthrus.bench.shapes import Qwen35Shape
from pyorthrus.testing.qwen35 import write_tiny_qwen35

N_RS_SEQ = 4  # snapshots kept: an Orthrus block of K = 4 fits


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    m = Model(write_tiny_qwen35(tmp_path_factory.mktemp("qwen35") / "tiny-qwen35.gguf"))
    yield m
    m.close()


@pytest.fixture(scope="module")
def tokens(qwen35):
    prompt = qwen35.tokenize("The capital of France is Paris, and the capital of Italy is Rome.", add_special=False)
    assert len(prompt) >= 13
    return prompt


def logits_after(model: Model, batches: list[tuple[list[int], int]], removed_from: int | None = None,
                 flash_attn: bool = False) -> tuple[np.ndarray, bool]:
    """In a fresh context, decode each (tokens, first position) batch in turn; with removed_from, seq_rm(removed_from,
    -1) before the last one. Returns the last batch's last logits row and whether the removal was accepted."""
    ctx = Context(model, n_ctx=256, n_batch=32, n_rs_seq=N_RS_SEQ, flash_attn=flash_attn, n_threads=2)
    try:
        accepted = True
        for i, (batch, pos) in enumerate(batches):
            assert ctx.decode(batch, pos) == 0
            if removed_from is not None and i == len(batches) - 2:
                accepted = ctx.seq_rm(removed_from)
        return ctx.logits(len(batches[-1][0]) - 1), accepted
    finally:
        ctx.close()


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("removed", [4, 3, 1])
def test_removing_the_last_tokens_restores_the_state(qwen35, tokens, removed, flash_attn):
    """Decode 8 tokens, then a block of 4 (one ubatch), remove its last `removed` tokens and decode the next token:
    the logits equal those of a context that decoded only what was kept. removed = 4 is the whole block (an Orthrus
    draft), the case whose state before the ubatch llama.cpp had not kept."""
    prefix, block, kept = tokens[:8], tokens[8:12], 4 - removed
    nxt = tokens[12]
    got, accepted = logits_after(qwen35, [(prefix, 0), (block, 8), ([nxt], 8 + kept)], removed_from=8 + kept,
                                 flash_attn=flash_attn)
    assert accepted
    want, _ = logits_after(qwen35, [(prefix, 0)] + ([(block[:kept], 8)] if kept else []) + [([nxt], 8 + kept)],
                           flash_attn=flash_attn)
    np.testing.assert_array_equal(got, want)


def test_a_removal_beyond_the_last_ubatch_is_refused(qwen35, tokens):
    """After a one-token ubatch only that token can be taken back: removing two (within n_rs_seq, but one of them
    decoded by an earlier ubatch whose snapshots were overwritten) is refused, and the cache is left as it was."""
    ctx = Context(qwen35, n_ctx=256, n_batch=32, n_rs_seq=N_RS_SEQ, n_threads=2)
    try:
        assert ctx.decode(tokens[:8], 0) == 0
        assert ctx.decode([tokens[8]], 8) == 0
        assert not ctx.seq_rm(7)
        assert ctx.pos_max() == 8
        assert ctx.decode([tokens[9]], 9) == 0
        got = ctx.logits(0)
    finally:
        ctx.close()
    want, _ = logits_after(qwen35, [(tokens[:8], 0), ([tokens[8]], 8), ([tokens[9]], 9)])
    np.testing.assert_array_equal(got, want)


def test_inspect_reports_the_state_llama_cpp_allocates(tmp_path):
    """`pyorthrus inspect` counts a hybrid model's recurrent state per sequence as llama.cpp allocates it (its
    "RS buffer size" for one sequence without snapshots, printed in MiB to two decimals)."""
    path = write_tiny_qwen35(tmp_path / "wider.gguf", config=Qwen35Shape(state=64, value_heads=8))
    info = inspect_gguf(path)["recurrent"]
    assert (info["recurrent_layers"], info["attention_layers"]) == (3, 1)
    code = f"import llama_cpp; llama_cpp.Llama({str(path)!r}, n_ctx=256, n_seq_max=1, verbose=True)"
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr
    allocated = float(re.search(r"RS buffer size =\s*([\d.]+) MiB", log).group(1))
    assert abs(info["state_bytes_per_sequence"] / 2**20 - allocated) <= 0.005, (info, allocated)
