"""Fused cycles (patch 0009) in the real patched llama.cpp with the shipped SmolLM2 adapter: greedy output equals
AR, the carried drafts equal the drafts a separate pass makes (the same acceptance, cycle for cycle), sampling stays
lossless (chi-square against AR), and bad settings are clean errors."""
from __future__ import annotations

import ctypes

import pytest

from orthrus_harness import Context, Model, greedy_ar  # first: env
from pyorthrus import Orthrus, _lib as O
from pyorthrus import assets, check_sampling

import llama_cpp.llama_cpp as L

PROMPTS = ["What is the capital of France?", "List the first ten prime numbers.",
           "Write a Python function that returns the n-th Fibonacci number."]
COUNTING = "Count from 1 to 20."  # whole 4-blocks accepted with the draft's bonus guess right: carried drafts


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = Model(smollm2_path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def adapter(model):
    ad = model.load_adapter(assets.default_adapter())
    assert ad, O.last_error()
    yield ad
    O.llama_orthrus_adapter_free(ad)


@pytest.fixture(scope="module", params=[False, True], ids=["fa-off", "fa-on"])
def ctx(request, model, adapter):
    c = Context(model, flash_attn=request.param)
    assert O.llama_orthrus_set_adapter(c.ptr, adapter) == 0
    yield c
    O.llama_orthrus_set_adapter(c.ptr, None)
    c.close()


def _cycles(ctx, prompt, n_tokens, K, fused):
    """Greedy cycles at K: the tokens and, per cycle, (committed, accepted, passes, carried)."""
    last = ctx.prefill(prompt)
    p = O.llama_orthrus_default_params()
    p.block_size, p.fused = K, fused
    out = (L.llama_token * 32)()
    st = O.llama_orthrus_stats()
    tokens, cycles = [], []
    while len(tokens) < n_tokens:
        n = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, n_tokens - len(tokens), ctypes.byref(st))
        assert n > 0, O.last_error()
        tokens += list(out[:n])
        last = tokens[-1]
        cycles.append((n, st.n_accepted, st.n_passes, st.carried))
        assert ctx.pos_max() == len(prompt) + len(tokens) - 2  # the cache convention, fused or not
        if st.stopped:
            break
    return tokens, cycles


@pytest.mark.parametrize("K", [4, 8])
def test_fused_greedy_equals_ar_and_carries_the_same_drafts(ctx, model, K):
    carried = 0
    for text in PROMPTS:
        prompt = model.chat_prompt(text)
        ref = greedy_ar(ctx, prompt, 48)
        plain_tokens, plain = _cycles(ctx, prompt, len(ref), K, fused=False)
        fused_tokens, fused = _cycles(ctx, prompt, len(ref), K, fused=True)
        assert fused_tokens == plain_tokens == ref, text
        # a carried draft was made in a 2K-token pass: in this batch-invariant build it must be the very draft a
        # separate pass makes, so every cycle accepts as many drafts as the unfused cycle at the same place
        assert [c[:2] for c in fused] == [c[:2] for c in plain], text
        assert all(passes == (1 if was_carried else 2) for _, _, passes, was_carried in fused)
        assert not any(c[3] for c in plain)
        carried += sum(c[3] for c in fused)
    if K == 4:  # the shipped adapter accepts whole 4-blocks often, 8-blocks rarely in 48 tokens
        assert carried > 0  # the carried path really ran


def test_fused_settings_are_checked(ctx, model):
    prompt = model.chat_prompt(PROMPTS[0])
    last = ctx.prefill(prompt)
    out = (L.llama_token * 16)()
    st = O.llama_orthrus_stats()
    p = O.llama_orthrus_default_params()
    p.block_size, p.verify_len, p.fused = 8, 4, True
    assert O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st)) < 0
    assert "verify the whole block" in O.last_error()
    small = Context(model, n_batch=8)  # 2K = 16 > n_ubatch
    try:
        assert O.llama_orthrus_set_adapter(small.ptr, O.llama_orthrus_get_adapter(ctx.ptr)) == 0
        last = small.prefill(prompt)
        p.verify_len = 0
        assert O.llama_orthrus_cycle(small.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st)) < 0
        assert "n_ubatch" in O.last_error()
        assert small.pos_max() == len(prompt) - 2
    finally:
        O.llama_orthrus_set_adapter(small.ptr, None)
        small.close()


@pytest.fixture(scope="module")
def orthrus_fused(smollm2_path):
    with Orthrus(smollm2_path, adapter_path=assets.default_adapter(), block_size=4, n_ctx=256, n_threads=2,
                 fused=True) as llm:
        yield llm


def test_fused_generate_equals_ar_through_the_class(orthrus_fused):
    tokens = orthrus_fused.tokenize(orthrus_fused.chat_prompt([{"role": "user", "content": COUNTING}]))
    out = orthrus_fused.generate(tokens, max_tokens=48)
    assert out.tokens == orthrus_fused.ar_view().generate(tokens, max_tokens=48).tokens
    assert out.stats.n_carried > 0
    assert out.stats.n_passes == 2 * out.stats.n_cycles - out.stats.n_carried


def test_fused_sampling_is_lossless(orthrus_fused):
    """Per-position chi-square homogeneity (Bonferroni) of AR and fused Orthrus samples of the same prompt, with
    cycles that really carried drafts over (their drafts and q came from the previous cycle's fused pass)."""
    tokens = orthrus_fused.tokenize(orthrus_fused.chat_prompt([{"role": "user", "content": COUNTING}]))
    sampling = dict(temperature=1.0, top_k=3)
    positions, n = 8, 120
    ar_runs = check_sampling.draw_runs(orthrus_fused.ar_view(), tokens, range(n), positions, sampling)
    fused_runs, carried = [], 0
    for seed in range(n, 2 * n):
        orthrus_fused.seed = seed
        out = orthrus_fused.generate(tokens, max_tokens=positions, **sampling)
        carried += out.stats.n_carried
        fused_runs.append(out.tokens + [check_sampling.ENDED] * (positions - len(out.tokens)))
    orthrus_fused.seed = 0
    report = check_sampling.compare_runs(ar_runs, fused_runs, alpha=0.01)
    assert report["tested_positions"] >= 3
    assert report["passed"], report["rejected_positions"]
    assert carried > 0
