"""The decode loop of patches 0008 and 0009 in the real patched llama.cpp, with the shipped SmolLM2 adapter.

0008: argmax mode (each output row's argmax computed by the graph instead of logits copied to the host),
llama_orthrus_step (AR steps in C) mixed with cycles under the cache convention, and a scheduler per view (passes
alternate views without changing what they compute). 0009, fused cycles: greedy output equals AR, the carried drafts
equal the drafts a separate pass makes (the same acceptance, cycle for cycle), sampling stays lossless (chi-square
against AR), and bad settings are clean errors."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pyorthrus.testing.harness import Context, greedy_ar, orthrus_generate, orthrus_params
from pyorthrus.testing.adapters import SMOLLM2_MASK_TOKEN_ID
from pyorthrus import Orthrus, _lib as O
from pyorthrus import assets
from pyorthrus.check import sampling as check_sampling

import llama_cpp.llama_cpp as L

PROMPTS = ["What is the capital of France?", "List the first ten prime numbers.",
           "Write a Python function that returns the n-th Fibonacci number."]
COUNTING = "Count from 1 to 20."  # whole 4-blocks accepted with the draft's bonus guess right: carried drafts


def _rows_argmax_two_ways(ctx, block, s, diffusion):
    """The argmax of every row of one pass, from host logits and from argmax mode."""
    assert O.llama_orthrus_set_diffusion(ctx.ptr, diffusion) == 0
    try:
        assert ctx.decode(block, s, all_logits=True) == 0
        host = [int(np.argmax(row)) for row in ctx.logits_rows(len(block))]
        assert ctx.seq_rm(s)
        O.llama_orthrus_set_argmax(ctx.ptr, True)
        assert ctx.decode(block, s, all_logits=True) == 0
        device = [O.llama_orthrus_get_argmax_ith(ctx.ptr, i) for i in range(len(block))]
        assert ctx.seq_rm(s)
    finally:
        O.llama_orthrus_set_argmax(ctx.ptr, False)
        O.llama_orthrus_set_diffusion(ctx.ptr, False)
    return host, device


@pytest.mark.parametrize("diffusion", [False, True], ids=["verify", "draft"])
def test_argmax_mode_equals_host_argmax(ctx, model, diffusion):
    prompt = model.chat_prompt(PROMPTS[0])
    s = len(prompt) - 1
    ctx.prefill(prompt)
    block = prompt[-1:] + model.tokenize(" The capital of France is Paris, a city", add_special=False)[:11]
    host, device = _rows_argmax_two_ways(ctx, block, s, diffusion)
    assert device == host
    assert len(set(host)) > 1  # rows that differ: a row mix-up would show
    # argmax mode off again: logits come back and no argmax is reported
    assert ctx.decode(block[:1], s) == 0
    assert O.llama_orthrus_get_argmax_ith(ctx.ptr, 0) == -1
    assert int(np.argmax(ctx.logits(0))) == host[0]
    assert ctx.seq_rm(s)


def test_steps_and_cycles_interleave_under_the_cache_convention(ctx, model):
    """Greedy steps in C and cycles at changing K, mixed: the AR tokens, the convention after every call, and
    drafts really accepted (equality alone would also hold if no draft ever were)."""
    for text in PROMPTS:
        prompt = model.chat_prompt(text)
        ref = greedy_ar(ctx, prompt, 40, stop_at_eog=False)
        last = ctx.prefill(prompt)
        out = (L.llama_token * 16)()
        st = O.llama_orthrus_stats()
        tokens, accepted, plan = [], 0, [1, 4, 1, 1, 16, 8, 1, 2]
        while len(tokens) < len(ref):
            k = plan[len(tokens) % len(plan)]
            p = orthrus_params(block_size=max(k, 2))
            if k == 1:
                n = O.llama_orthrus_step(ctx.ptr, 0, last, ctypes.byref(p), out, ctypes.byref(st))
            else:
                n = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, len(ref) - len(tokens),
                                          ctypes.byref(st))
                accepted += st.n_accepted
            assert n >= 1, O.last_error()
            tokens += list(out[:n])
            last = tokens[-1]
            assert ctx.pos_max() == len(prompt) + len(tokens) - 2
        assert tokens == ref, text
        assert accepted > 0


def test_step_sampling_with_top_k_1_is_greedy_and_seeded(ctx, model):
    prompt = model.chat_prompt(PROMPTS[1])
    ref = greedy_ar(ctx, prompt, 12, stop_at_eog=False)
    out = (L.llama_token * 1)()
    st = O.llama_orthrus_stats()

    def sampled(**fields):
        last, tokens = ctx.prefill(prompt), []
        p = orthrus_params(**fields)
        for _ in range(12):
            assert O.llama_orthrus_step(ctx.ptr, 0, last, ctypes.byref(p), out, ctypes.byref(st)) == 1
            last = out[0]
            tokens.append(last)
        return tokens

    assert sampled(temperature=1.0, top_k=1, seed=3) == ref
    hot = sampled(temperature=2.0, seed=5)
    assert hot == sampled(temperature=2.0, seed=5)  # reproducible from the seed
    assert hot != ref  # at temperature 2 a 12-token run that equals greedy is vanishingly unlikely


def test_step_errors_are_clean(ctx, model):
    prompt = model.chat_prompt(PROMPTS[0])
    last = ctx.prefill(prompt)
    out = (L.llama_token * 1)()
    st = O.llama_orthrus_stats()
    p = orthrus_params()
    assert O.llama_orthrus_step(ctx.ptr, 0, model.n_vocab + 5, ctypes.byref(p), out, ctypes.byref(st)) < 0
    assert "not in the vocabulary" in O.last_error()
    assert O.llama_orthrus_set_diffusion(ctx.ptr, True) == 0
    try:
        assert O.llama_orthrus_step(ctx.ptr, 0, last, ctypes.byref(p), out, ctypes.byref(st)) < 0
        assert "diffusion view" in O.last_error()
    finally:
        O.llama_orthrus_set_diffusion(ctx.ptr, False)
    assert ctx.pos_max() == len(prompt) - 2  # nothing decoded by the failed calls
    assert O.llama_orthrus_step(ctx.ptr, 0, last, ctypes.byref(p), out, ctypes.byref(st)) == 1


def test_alternating_views_reuse_their_graphs_without_changing_results(ctx, model):
    """Draft, verify, draft, verify of the same shape: with a scheduler per view each pass reuses its graph, and
    the second round's rows equal the first's bit for bit (a stale or crossed graph would not)."""
    prompt = model.chat_prompt(PROMPTS[1])
    s = len(prompt) - 1
    block = prompt[-1:] + [SMOLLM2_MASK_TOKEN_ID] * 7
    ctx.prefill(prompt)
    rounds = []
    for _ in range(2):
        rows = {}
        for diffusion in (True, False):
            assert O.llama_orthrus_set_diffusion(ctx.ptr, diffusion) == 0
            assert ctx.decode(block, s, all_logits=True) == 0
            rows[diffusion] = ctx.logits_rows(len(block))
            assert ctx.seq_rm(s)
        assert O.llama_orthrus_set_diffusion(ctx.ptr, False) == 0
        rounds.append(rows)
    assert np.array_equal(rounds[0][True], rounds[1][True])
    assert np.array_equal(rounds[0][False], rounds[1][False])
    assert not np.array_equal(rounds[0][True], rounds[0][False])


# -- fused cycles (patch 0009) ------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [4, 8])
def test_fused_greedy_equals_ar_and_carries_the_same_drafts(ctx, model, K):
    carried = 0
    for text in PROMPTS:
        prompt = model.chat_prompt(text)
        ref = greedy_ar(ctx, prompt, 48)
        plain = orthrus_generate(ctx, prompt, len(ref), block_size=K)
        fused = orthrus_generate(ctx, prompt, len(ref), block_size=K, fused=True)
        assert fused.tokens == plain.tokens == ref, text
        # a carried draft was made in a 2K-token pass: in this batch-invariant build it must be the very draft a
        # separate pass makes, so every cycle accepts as many drafts as the unfused cycle at the same place
        assert [(c["n"], c["accepted"]) for c in fused.per_cycle] == \
            [(c["n"], c["accepted"]) for c in plain.per_cycle], text
        assert all(c["passes"] == (1 if c["carried"] else 2) for c in fused.per_cycle)
        assert not any(c["carried"] for c in plain.per_cycle)
        carried += sum(c["carried"] for c in fused.per_cycle)
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
        assert O.llama_set_adapter_orthrus(small.ptr, O.llama_get_adapter_orthrus(ctx.ptr)) == 0
        last = small.prefill(prompt)
        p.verify_len = 0
        assert O.llama_orthrus_cycle(small.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st)) < 0
        assert "n_ubatch" in O.last_error()
        assert small.pos_max() == len(prompt) - 2
    finally:
        O.llama_set_adapter_orthrus(small.ptr, None)
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
    # 12 positions: the counting answer starts "1. 1\n2. 2" and, sampled, rarely carries a draft in its first 8
    # tokens with the shipped adapter (0 of 120 runs; 20 carried cycles in 12 tokens)
    positions, n = 12, 120
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
