"""The llama.cpp patch series (issue 7) through pyorthrus._lib: real library, real SmolLM2 Q4_1, no mocks.

Identity adapter (diff weights = the AR weights' quantized bytes) throughout: a valid adapter before any trained
one exists. Its drafts are not the AR model's (bidirectional over MASK), so rejections are frequent: exactly what
losslessness tests need.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pyorthrus.sampling import sampling_distribution
from pyorthrus.testing.harness import Context, Model, greedy_ar, orthrus_generate
from pyorthrus.check.stats import goodness_of_fit
from pyorthrus.testing.adapters import SMOLLM2_MASK_TOKEN_ID, write_adapter, write_identity_adapter

from pyorthrus import _lib as O

TRAINED_K = 16

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List the first ten prime numbers.",
    "Explain in two sentences why the sky is blue.",
]


@pytest.fixture(scope="module")
def adapter_path(smollm2_path, tmp_path_factory):
    return write_identity_adapter(smollm2_path, tmp_path_factory.mktemp("orthrus") / "identity.gguf",
                                  block_size=TRAINED_K)


@pytest.fixture(scope="module")
def adapter(model, adapter_path):
    ad = model.load_adapter(adapter_path)
    assert ad, O.last_error()
    yield ad
    O.llama_adapter_orthrus_free(ad)


def test_api_version_and_adapter_metadata(model, adapter):
    assert O.llama_orthrus_api_version() == O.LLAMA_ORTHRUS_API_VERSION
    assert O.llama_adapter_orthrus_block_size(adapter) == TRAINED_K
    assert O.llama_adapter_orthrus_mask_token(adapter) == SMOLLM2_MASK_TOKEN_ID
    assert not O.llama_model_has_orthrus(model.ptr)
    assert O.llama_model_orthrus_block_size(model.ptr) == 0


def test_ar_logits_unchanged_by_adapter_and_mode_toggles(ctx, model):
    """AR -> draft -> AR over the same cache state and batch shape: AR logits bitwise equal; the draft differs
    (so no AR graph was reused for it), and a context without adapter gives the same AR logits."""
    prompt = model.chat_prompt(PROMPTS[0])
    block = prompt[-1:] + model.tokenize(" Paris is the capital", add_special=False)[:7]
    K = len(block)
    s = len(prompt) - 1

    def ar_rows():
        assert ctx.decode(block, s, all_logits=True) == 0
        rows = ctx.logits_rows(K)
        assert ctx.seq_rm(s)
        return rows

    ctx.prefill(prompt)
    ar1 = ar_rows()
    assert O.llama_orthrus_set_diffusion(ctx.ptr, True) == 0
    assert O.llama_orthrus_get_diffusion(ctx.ptr)
    assert ctx.decode(block, s, all_logits=True) == 0
    draft = ctx.logits_rows(K)
    assert ctx.seq_rm(s)
    assert O.llama_orthrus_set_diffusion(ctx.ptr, False) == 0
    assert not O.llama_orthrus_get_diffusion(ctx.ptr)
    ar2 = ar_rows()
    assert np.array_equal(ar1, ar2)
    assert ctx.pos_max() == s - 1
    # the diffusion view is bidirectional: every row but the last sees later tokens and must differ
    assert not np.array_equal(draft[0], ar1[0])
    # identity weights + diffusion view == the AR weights with a non-causal mask (proves mask and weights)
    import llama_cpp.llama_cpp as L
    L.llama_set_causal_attn(ctx.ptr, False)
    try:
        nc = ar_rows()
    finally:
        L.llama_set_causal_attn(ctx.ptr, True)
    assert np.array_equal(nc, draft)

    plain = Context(model, flash_attn=ctx.flash_attn)  # no adapter attached
    try:
        plain.prefill(prompt)
        assert plain.decode(block, s, all_logits=True) == 0
        plain_rows = plain.logits_rows(K)
    finally:
        plain.close()
    assert np.array_equal(plain_rows, ar1)


@pytest.mark.parametrize("K", [4, 16])
def test_greedy_orthrus_equals_greedy_ar(ctx, model, K):
    """Token-identical to one-token-at-a-time greedy AR in the same build (4 prompts x 48 tokens), with drafts
    accepted along the way (equality alone would also hold if every draft were rejected)."""
    accepted = 0
    for text in PROMPTS:
        prompt = model.chat_prompt(text)
        ref = greedy_ar(ctx, prompt, 48)
        run = orthrus_generate(ctx, prompt, 48, block_size=K)  # checks the cache convention after every cycle
        assert run.tokens == ref, (text, K)
        assert run.drafted == run.cycles * (K - 1)
        accepted += run.accepted
    assert accepted > 0


def test_verify_len_shorter_than_block(ctx, model):
    prompt = model.chat_prompt(PROMPTS[2])
    ref = greedy_ar(ctx, prompt, 32)
    run = orthrus_generate(ctx, prompt, 32, block_size=16, verify_len=4)
    assert run.tokens == ref
    assert run.drafted <= 3 * run.cycles


def test_eog_ends_generation_and_cache_is_consistent(ctx, model):
    """Generation through the natural end of an answer stops on <|im_end|> (EOG) exactly where AR does."""
    prompt = model.chat_prompt(PROMPTS[0])
    ref = greedy_ar(ctx, prompt, 48)
    assert model.is_eog(ref[-1]), "the reference answer should end with an EOG token within 48 tokens"
    run = orthrus_generate(ctx, prompt, 200, block_size=8)
    assert run.stopped
    assert run.tokens == ref
    assert ctx.pos_max() == len(prompt) + len(ref) - 2


def test_stop_token_in_the_middle_of_an_accepted_block(ctx, model):
    """Find a cycle that commits >= 2 tokens (>= 1 accepted draft + bonus) and replay it from the same cache
    state with its first token as a stop token: the output ends exactly there and the cache follows."""
    prompt = model.chat_prompt("Count from 1 to 20, separated by commas.")
    last = ctx.prefill(prompt)
    p = O.llama_orthrus_default_params()
    p.block_size = 8
    out = (O.llama_token * 16)()
    st = O.llama_orthrus_stats()
    for _ in range(60):
        s = ctx.pos_max() + 1
        n = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st))
        assert n > 0, O.last_error()
        toks = list(out[:n])
        assert not st.stopped, "ran into the end of the answer before finding an accepted draft"
        if n >= 2 and toks[0] != toks[1]:
            break
        last = toks[-1]
    else:
        pytest.fail("no cycle accepted a draft token")
    assert st.n_accepted == n - 1
    # replay the same cycle from the same cache state with toks[0] as a stop token
    assert ctx.seq_rm(s)
    assert ctx.pos_max() == s - 1
    stop = (O.llama_token * 1)(toks[0])
    p.stop_tokens = ctypes.cast(stop, O.llama_token_p)
    p.n_stop_tokens = 1
    n2 = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st))
    assert n2 == 1, (n2, toks)
    assert out[0] == toks[0]
    assert st.stopped and st.n_committed == 1 and st.n_accepted == n - 1
    assert ctx.pos_max() == s  # the newest committed token (toks[0], at s+1) is known, not cached
    # n_out_max truncates the same way, without the stop flag
    assert ctx.seq_rm(s)
    p.n_stop_tokens = 0
    n3 = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, 1, ctypes.byref(st))
    assert n3 == 1 and out[0] == toks[0] and not st.stopped
    assert ctx.pos_max() == s
    # and the full replay commits the same tokens again (deterministic greedy cycle)
    assert ctx.seq_rm(s)
    n4 = O.llama_orthrus_cycle(ctx.ptr, 0, last, ctypes.byref(p), out, 16, ctypes.byref(st))
    assert list(out[:n4]) == toks
    assert ctx.pos_max() == s + n4 - 1


def test_cycle_errors_do_not_abort(model, adapter):
    c = Context(model, n_batch=16, n_ubatch=8)
    try:
        prompt = model.chat_prompt(PROMPTS[0])
        last = c.prefill(prompt)
        p = O.llama_orthrus_default_params()
        out = (O.llama_token * 64)()
        # no adapter attached, not a merged model
        assert O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(p), out, 64, None) < 0
        assert "adapter" in O.last_error()
        assert O.llama_orthrus_set_diffusion(c.ptr, True) == -1
        assert "diff weights" in O.last_error()
        assert O.llama_set_adapter_orthrus(c.ptr, adapter) == 0
        p.block_size = TRAINED_K  # > n_ubatch = 8
        assert O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(p), out, 64, None) < 0
        assert "n_ubatch" in O.last_error()
        p.block_size = TRAINED_K * 2  # > trained K
        assert O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(p), out, 64, None) < 0
        assert "trained" in O.last_error()
        # a diffusion-view batch larger than one ubatch is an error from llama_decode, not an abort
        assert O.llama_orthrus_set_diffusion(c.ptr, True) == 0
        assert c.decode(prompt[:12], len(prompt) - 1) == -1
        assert c.pos_max() == len(prompt) - 2
        assert O.llama_orthrus_set_diffusion(c.ptr, False) == 0
        p.block_size = 4
        assert c.pos_max() == len(prompt) - 2
        assert O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(p), out, 64, None) > 0
        O.llama_set_adapter_orthrus(c.ptr, None)
    finally:
        c.close()


FAULTS = {
    "wrong-layer-count": (dict(n_layers=29), "block_count"),
    "wrong-hidden-size": (dict(embedding_length=640), "embedding_length"),
    "wrong-heads": (dict(head_count=8), "head_count"),
    "wrong-kv-heads": (dict(head_count_kv=1), "head_count_kv"),
    "wrong-vocab": (dict(vocab_size=32000), "vocab_size"),
    "wrong-arch": (dict(arch="qwen3"), "architecture"),
    "truncated": (dict(truncate_bytes=4096), "truncated"),
    "wrong-tensor-shape": (dict(swap_qk_shapes=True), "shape"),
    "unexpected-tensor": (dict(extra_tensor=True), "unexpected"),
    "not-an-adapter": (dict(general_type="model"), "general.type"),
    "mask-out-of-vocab": (dict(mask_token_id=10 ** 6), "mask_token_id"),
    "block-size-1": (dict(block_size=1), "block_size"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_adapter_mismatch_is_an_error_not_a_crash(model, smollm2_path, tmp_path, fault):
    kwargs, word = FAULTS[fault]
    path = write_adapter(smollm2_path, tmp_path / f"{fault}.gguf", **kwargs)
    assert model.load_adapter(path) is None
    msg = O.last_error()
    assert word in msg, msg
    assert "\n" not in msg


def test_any_order_of_frees_is_safe(smollm2_path, adapter_path):
    """Adapters are owned by their model (as LoRA adapters are) and freeing one detaches it from its contexts: an
    adapter freed while attached leaves its context with a clean error instead of freed tensors, a context freed
    first drops out of its adapter, and a model freed with an adapter still loaded frees it."""
    m = Model(smollm2_path)
    first, second = Context(m, n_ctx=128, n_batch=32), Context(m, n_ctx=128, n_batch=32)
    params = O.llama_orthrus_default_params()
    params.block_size = 4
    out, stats = (O.llama_token * 4)(), O.llama_orthrus_stats()

    def cycle() -> int:
        last = first.prefill(m.chat_prompt("Hi"))
        return O.llama_orthrus_cycle(first.ptr, 0, last, ctypes.byref(params), out, 4, ctypes.byref(stats))

    ad = m.load_adapter(adapter_path)
    for c in (first, second):
        assert O.llama_set_adapter_orthrus(c.ptr, ad) == 0
    assert cycle() > 0
    second.close()
    O.llama_adapter_orthrus_free(ad)
    assert not O.llama_get_adapter_orthrus(first.ptr)
    assert cycle() < 0
    assert "no diff weights" in O.last_error()
    again = m.load_adapter(adapter_path)
    assert O.llama_set_adapter_orthrus(first.ptr, again) == 0
    assert cycle() > 0
    first.close()
    m.close()  # frees `again` with the model (a double free would abort the process here)


def test_adapter_truncated_header_and_missing_file(model, adapter_path, tmp_path):
    head = tmp_path / "head.gguf"
    head.write_bytes(adapter_path.read_bytes()[:100])
    assert model.load_adapter(head) is None
    assert O.last_error()
    assert model.load_adapter(tmp_path / "missing.gguf") is None
    assert "cannot open" in O.last_error()
    # the model still works with a good adapter afterwards
    ad = model.load_adapter(adapter_path)
    assert ad
    O.llama_adapter_orthrus_free(ad)


@pytest.mark.parametrize("temp,top_k,top_p,min_p", [(1.5, 6, 1.0, 0.0), (1.0, 0, 0.8, 0.02)],
                         ids=["temp-topk", "topp-minp"])
def test_sampling_is_lossless_chi_square(model, adapter, temp, top_k, top_p, min_p):
    """Distribution of the first committed token of a cycle over many seeds equals the AR distribution after
    the same temperature/top-k processing (chi-square, significance level 0.001). The first committed token is
    d_1 if accepted, else a sample of the residual norm(max(0, p - q)): both branches are exercised."""
    c = Context(model, n_ctx=256, n_batch=64)
    try:
        assert O.llama_set_adapter_orthrus(c.ptr, adapter) == 0
        prompt = model.chat_prompt("Name a colour.")
        # reference: AR distribution of the token after the prompt
        c.prefill(prompt)
        assert c.decode(prompt[-1:], len(prompt) - 1) == 0
        p_ref = sampling_distribution(c.logits(-1), temp, top_k=top_k, top_p=top_p, min_p=min_p)
        support = np.flatnonzero(p_ref)
        assert 2 <= len(support) <= 64, len(support)

        last = c.prefill(prompt)
        par = O.llama_orthrus_default_params()
        par.block_size = 4
        par.temperature = temp
        par.top_k = top_k
        par.top_p = top_p
        par.min_p = min_p
        out = (O.llama_token * 8)()
        st = O.llama_orthrus_stats()
        N = 400
        first = []
        accepted_any = 0
        s = len(prompt) - 1
        for seed in range(N):
            par.seed = seed
            n = O.llama_orthrus_cycle(c.ptr, 0, last, ctypes.byref(par), out, 8, ctypes.byref(st))
            assert n > 0, O.last_error()
            first.append(out[0])
            accepted_any += st.n_accepted > 0
            assert c.seq_rm(s)
        fit = goodness_of_fit(first, p_ref)  # KeyError: a token outside the processed support
        assert fit["p_value"] > 1e-3, fit
        assert 0 < accepted_any < N  # both the accept and the residual branch happened
    finally:
        c.close()
