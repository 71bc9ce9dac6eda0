"""Tree verify (patch 0019) in the real patched llama.cpp, with the shipped SmolLM2 adapter.

The tree mask (llama_orthrus_set_tree) gives each node the rows a chain verify of its own path gives; greedy tree
cycles reproduce greedy AR token for token at several tree sizes, flash attention off and on, with the off-chain
relayout actually running; after every tree cycle the next logits are bitwise those of a fresh decode of the same
tokens; sampled tree cycles follow the AR distribution (chi-square at two depths, with rejections at both); bad
settings are clean errors and the end of the cache falls back to a chain."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pyorthrus.sampling import sampling_distribution
from pyorthrus.testing.harness import Context, greedy_ar, orthrus_generate, orthrus_params
from pyorthrus import _lib as O
from pyorthrus.check.stats import goodness_of_fit

import llama_cpp.llama_cpp as L

PROMPTS = ["What is the capital of France?", "List the first ten prime numbers.",
           "Write a Python function that returns the n-th Fibonacci number."]


def _set_tree(ctx, parent) -> int:
    arr = (ctypes.c_int32 * max(1, len(parent)))(*parent)
    return O.llama_orthrus_set_tree(ctx.ptr, arr, len(parent))


def _tree_rows(ctx, s, tokens, depths, parent):
    """Logits of every row of one tree pass at s (positions s + depth), the cells removed again."""
    assert _set_tree(ctx, parent) == 0, O.last_error()
    try:
        assert ctx.decode_rows([(t, s + d, 0, True) for t, d in zip(tokens, depths)]) == 0
        rows = ctx.logits_rows(len(tokens))
    finally:
        assert _set_tree(ctx, []) == 0
    assert ctx.seq_rm(s)
    return rows


def _chain_rows(ctx, s, tokens):
    assert ctx.decode(tokens, s, all_logits=True) == 0
    rows = ctx.logits_rows(len(tokens))
    assert ctx.seq_rm(s)
    return rows


def test_tree_mask_rows_equal_chain_rows(ctx, model):
    """A tree [root; a1 -> a2 -> a3 (the chain, first); b1 (sibling of a1) -> b2]: the chain's rows are bitwise a
    chain verify's (flash attention off and on); the branch's rows are its own chain's (bitwise with flash
    attention, whose result depends on the order of the cells only; to rounding without it)."""
    prompt = model.chat_prompt(PROMPTS[0])
    s = len(prompt) - 1
    ctx.prefill(prompt)
    root = prompt[-1]
    a = model.tokenize(" The capital of France", add_special=False)[:3]
    b = model.tokenize(" Paris is", add_special=False)[:2]
    tokens, depths, parent = [root, *a, *b], [0, 1, 2, 3, 1, 2], [-1, 0, 1, 2, 0, 4]
    tree = _tree_rows(ctx, s, tokens, depths, parent)
    chain_a = _chain_rows(ctx, s, [root, *a])
    chain_b = _chain_rows(ctx, s, [root, *b])
    assert np.array_equal(tree[:4], chain_a)
    if ctx.flash_attn:
        assert np.array_equal(tree[4:], chain_b[1:])
    else:
        np.testing.assert_allclose(tree[4:], chain_b[1:], atol=1e-2)
    # a wrong tree is a clean -1 (the parents must come first), and a batch of another size a decode error
    assert _set_tree(ctx, [-1, 0, 2]) == -1 and "parent" in O.last_error()
    assert _set_tree(ctx, [0, 0]) == -1
    assert _set_tree(ctx, [-1, 0, 0]) == 0
    try:
        assert ctx.decode([root, *a], s, all_logits=True) != 0
    finally:
        assert _set_tree(ctx, []) == 0
    ctx.seq_rm(s)


@pytest.mark.parametrize("tree", [8, 16, 32])
def test_greedy_tree_equals_ar(ctx, model, tree):
    offchain = redecoded = 0
    per_cycle = []
    for text in PROMPTS:
        prompt = model.chat_prompt(text)
        ref = greedy_ar(ctx, prompt, 48)
        run = orthrus_generate(ctx, prompt, len(ref), block_size=16, tree=tree)
        tokens, cycles = run.tokens, run.per_cycle
        assert tokens == ref, text
        assert all(c["nodes"] == tree for c in cycles[:-1])  # the last may be cut short, never the tree
        offchain += sum(c["offchain"] > 0 for c in cycles)
        redecoded += sum(c["redecoded"] > 0 for c in cycles)
        per_cycle.append(len(tokens) / len(cycles))
    # paths left the argmax chain and were re-laid (strict relayout is the default): the hard case ran
    assert offchain > 0 and redecoded == offchain
    assert min(per_cycle) > 1.0


def test_next_logits_after_tree_cycles_equal_a_fresh_decode(ctx, model):
    """After tree cycles, on and off the argmax chain, the cache gives the next token's logits bitwise as a fresh
    context that decoded the same tokens does."""
    fresh = Context(model, flash_attn=ctx.flash_attn)
    checked = {"on": 0, "off": 0}

    def check_next(tokens, cycle):
        kind = "off" if cycle["offchain"] else "on"
        if checked[kind] >= 3:
            return
        checked[kind] += 1
        s = ctx.pos_max() + 1
        assert ctx.decode(tokens[-1:], s) == 0
        got = ctx.logits(0)
        assert ctx.seq_rm(s)
        seq = prompt + tokens
        fresh.prefill(seq)
        assert fresh.decode(seq[-1:], len(seq) - 1) == 0
        assert np.array_equal(got, fresh.logits(0)), (kind, len(tokens))

    try:
        for text in PROMPTS[1:]:
            prompt = model.chat_prompt(text)
            orthrus_generate(ctx, prompt, 48, block_size=16, tree=16, after_cycle=check_next)
    finally:
        fresh.close()
    assert checked["off"] > 0 and checked["on"] > 0


def test_sampled_tree_is_lossless_chi_square(model, adapter):
    """Over many seeds, the first committed token of a sampled tree cycle follows the AR distribution, and so does
    the second given the first (chi-square, significance level 0.001). A narrow tree (2 candidates per position)
    makes the draw leave it at depth 1 and at depth 2 often: both happen."""
    temp, top_k = 1.5, 6
    c = Context(model, n_ctx=256, n_batch=64)
    try:
        assert O.llama_set_adapter_orthrus(c.ptr, adapter) == 0
        prompt = model.chat_prompt("Name a colour.")
        s = len(prompt) - 1
        last = c.prefill(prompt)
        par = orthrus_params(block_size=4, temperature=temp, top_k=top_k, tree_nodes=6, tree_width=2)
        out = (O.llama_token * 8)()
        st = O.llama_orthrus_stats()
        N = 600
        runs = []
        for seed in range(N):
            par.seed = seed
            n = O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(par), out, 8, ctypes.byref(st))
            assert n > 0, O.last_error()
            assert st.n_tree_nodes == 6
            runs.append(list(out[:n]))
            assert c.seq_rm(s)

        def ar_probs(tokens):
            c.prefill(tokens)
            assert c.decode(tokens[-1:], len(tokens) - 1) == 0
            return sampling_distribution(c.logits(-1), temp, top_k=top_k)

        def assert_follows(samples, p_ref):
            fit = goodness_of_fit(samples, p_ref)  # KeyError: a token outside the processed support
            assert fit["p_value"] > 1e-3, fit

        assert_follows([r[0] for r in runs], ar_probs(prompt))
        # the second token, given the most frequent first token among the cycles that went on past it
        longer = [r for r in runs if len(r) >= 2]
        first = max({r[0] for r in longer}, key=lambda t: sum(r[0] == t for r in longer))
        given = [r[1] for r in longer if r[0] == first]
        assert len(given) >= 100, len(given)
        assert_follows(given, ar_probs(prompt + [first]))
        lengths = [len(r) for r in runs]
        assert lengths.count(1) > 0 and lengths.count(2) > 0  # left the tree at depth 1 and at depth 2
    finally:
        c.close()


def test_tree_settings_are_checked(model, adapter):
    c = Context(model, n_ctx=64, n_batch=16)
    try:
        assert O.llama_set_adapter_orthrus(c.ptr, adapter) == 0
        prompt = model.chat_prompt("Hi")
        out = (O.llama_token * 8)()
        st = O.llama_orthrus_stats()

        def cycle(**fields):
            last = c.prefill(prompt)
            return O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(orthrus_params(block_size=4, **fields)), out, 8,
                                         ctypes.byref(st))

        assert cycle(tree_nodes=16) < 0 and "n_ubatch" in O.last_error()  # 17 rows > n_batch 16: no abort
        assert cycle(tree_nodes=8, fused=True) < 0 and "fused" in O.last_error()
        assert cycle(tree_nodes=-1) < 0
        assert c.pos_max() == len(prompt) - 2  # refused before decoding: the cache is as it was
        assert cycle(tree_nodes=8) > 0 and st.n_tree_nodes == 8
        # near the end of the cache the tree's cells do not fit: a chain cycle instead
        n_cells = L.llama_n_ctx(c.ptr)  # (llama.cpp may round the context up)
        last = c.prefill(prompt + [prompt[-1]] * (n_cells - len(prompt) - 8))
        n = O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(orthrus_params(block_size=4, tree_nodes=12)), out, 8,
                                  ctypes.byref(st))
        assert n > 0, O.last_error()
        assert st.n_tree_nodes == 0 and st.n_drafted == 3
    finally:
        c.close()
