"""Orthrus on a hybrid base (issue 37, patches 0023 and 0025): a tiny random merged `qwen35` and `qwen35moe` (three
Gated DeltaNet layers and a gated attention layer, each with its diffusion view, the real Qwen3.5 vocabulary). A cycle decodes its draft block
through the twins and takes it back through the recurrent layers' state snapshots, then verifies and takes back the
rejected tokens: greedy output must be AR's token for token, and the state after the cycles AR's bit for bit."""
from __future__ import annotations

import itertools

import llama_cpp
import numpy as np
import pytest

from pyorthrus import Orthrus, PyorthrusError
from pyorthrus.bench.shapes import SHAPES
from pyorthrus.check.stats import goodness_of_fit
from pyorthrus.sampling import sampling_distribution
from pyorthrus.testing.harness import Context, Model, greedy_ar, orthrus_generate
from pyorthrus.testing.qwen35 import write_tiny_qwen35

TRAINED_K = 8
PROMPTS = ["The capital of France is", "def fibonacci(n):\n"]


@pytest.fixture(scope="module", params=["tiny-qwen35", "tiny-qwen35moe"])
def merged(request, tmp_path_factory):
    """The dense model, and the MoE one (patch 0025: 4 routed experts, 2 used, and a gated shared expert after each
    layer, shared by both views). Twins equal to their AR layers: drafts differ from AR only through the block's
    bidirectional attention, so cycles accept some drafts and reject others (about 1.8 tokens per cycle)."""
    return write_tiny_qwen35(tmp_path_factory.mktemp(request.param) / f"{request.param}-orthrus.gguf",
                             config=SHAPES[request.param], block_size=TRAINED_K, twin_noise=0.0)


@pytest.mark.parametrize("flash_attn", [False, True])
def test_greedy_orthrus_equals_ar(merged, flash_attn):
    with Orthrus(merged, n_ctx=512, flash_attn=flash_attn) as model:
        for k in (2, 4, TRAINED_K):
            for prompt in PROMPTS:
                got = model.generate(prompt, max_tokens=40, block_size=k)
                assert got.tokens == model.ar_view().generate(prompt, max_tokens=40).tokens, (k, prompt)
                assert got.stats.n_cycles > 0 and got.stats.tokens_per_cycle > 1.2, got.stats


def test_the_state_after_cycles_is_ar_state(merged):
    """After Orthrus cycles (checking the cache convention after each) the next token's logits equal those after
    plain AR steps over the same tokens, bit for bit: nothing of the drafts or rejected tokens stayed behind."""
    model = Model(merged)
    try:
        orthrus = Context(model, n_ctx=512, n_batch=64, n_rs_seq=TRAINED_K)
        ar = Context(model, n_ctx=512, n_batch=64, n_rs_seq=TRAINED_K)
        prompt = model.tokenize(PROMPTS[0], add_special=False)
        run = orthrus_generate(orthrus, prompt, 24, block_size=4)
        assert run.tokens == greedy_ar(ar, prompt, len(run.tokens), stop_at_eog=False)
        committed = prompt + run.tokens
        for ctx in (orthrus, ar):  # the newest token is known but not cached: decode it
            assert ctx.pos_max() == len(committed) - 2
            assert ctx.decode([committed[-1]], len(committed) - 1) == 0
        np.testing.assert_array_equal(orthrus.logits(0), ar.logits(0))
        orthrus.close()
        ar.close()
    finally:
        model.close()


def test_what_a_hybrid_cycle_cannot_do_is_refused(merged):
    model = Model(merged)
    try:
        few = Context(model, n_ctx=512, n_batch=64, n_rs_seq=2)
        with pytest.raises(RuntimeError, match="keep 2 state snapshots.*n_rs_seq >= 4"):
            orthrus_generate(few, model.tokenize(PROMPTS[0], add_special=False), 8, block_size=4)
        few.close()
    finally:
        model.close()
    with Orthrus(merged, n_ctx=512) as orthrus:
        assert llama_cpp.llama_n_rs_seq(orthrus.ctx) == TRAINED_K  # pyorthrus keeps a block's worth of snapshots
        for options in (dict(fused=True), dict(tree=8)):
            with pytest.raises(PyorthrusError, match="recurrent layers"):
                orthrus.generate(PROMPTS[0], max_tokens=8, **options)
    # a smaller fixed K bounds the snapshots' memory: K of them, and no larger block later
    with Orthrus(merged, n_ctx=512, block_size=4) as bounded:
        assert llama_cpp.llama_n_rs_seq(bounded.ctx) == 4
        assert bounded.generate(PROMPTS[0], max_tokens=8).stats.n_cycles > 0
        with pytest.raises(PyorthrusError, match="opened with block size 4, so its recurrent layers keep 4 state "
                                                 "snapshots: open it with block size 8 or more"):
            bounded.generate(PROMPTS[0], max_tokens=8, block_size=8)


class _ChainChoices:
    """Stands in for the auto controller: a fixed, repeating sequence of AR steps (1) and chain cycles at several K
    (no fused passes, no trees: what "auto" weighs on a model with recurrent layers)."""
    next_fused, next_tree = False, 0

    def __init__(self, choices):
        self._choices = itertools.cycle(choices)

    def choose(self, limit: int) -> int:
        return min(next(self._choices), max(2, limit))

    def observe_cycle(self, *args, **kwargs) -> None:
        pass

    def observe_step(self, seconds) -> None:
        pass

    def cost_note(self) -> str:
        return "scripted choices"


def test_auto_block_size_on_a_hybrid_model(merged):
    """block_size "auto" (`pyorthrus serve`'s default) measures the pass costs through the state snapshots and
    weighs chain cycles and AR steps only (no fused passes or trees there); AR steps interleaved with cycles at
    K = 2, 4, 8 leave the state exactly as AR steps would: greedy output is AR's."""
    with Orthrus(merged, n_ctx=512, block_size="auto", reprofile=True) as model:
        assert model.fused is False and model.auto_trees() == ()
        assert llama_cpp.llama_n_rs_seq(model.ctx) == TRAINED_K
        got = model.generate(PROMPTS[0], max_tokens=24)
        assert got.tokens == model.ar_view().generate(PROMPTS[0], max_tokens=24).tokens
        assert model.auto_controller is not None
        model.auto_controller = _ChainChoices([1, 4, 1, 8, 2, 1, 1, 8])
        for prompt in PROMPTS:
            got = model.generate(prompt, max_tokens=40)
            assert got.tokens == model.ar_view().generate(prompt, max_tokens=40).tokens, prompt
            assert got.stats.n_ar_steps > 0 and got.stats.n_cycles > 0, got.stats


def test_sampling_is_lossless_chi_square(tmp_path):
    """Sampled cycles on the hybrid model: the first committed token over 320 seeds follows the AR distribution after
    temperature 1.5 and top-k 6 (chi-square, significance 0.001). The twins equal their AR layers, so drafts differ
    from AR only through the block's bidirectional attention: accepted part of the time, both the accept and the
    residual branch run. Each seed starts from a fresh
    prefill: a state rollback is single-use until the next decode."""
    model = Model(write_tiny_qwen35(tmp_path / "twins.gguf", block_size=4, twin_noise=0.0))
    try:
        c = Context(model, n_ctx=256, n_batch=64, n_rs_seq=4)
        prompt = model.tokenize(PROMPTS[0], add_special=False)
        c.prefill(prompt)
        assert c.decode(prompt[-1:], len(prompt) - 1) == 0
        p_ref = sampling_distribution(c.logits(-1), 1.5, top_k=6)
        first, accepted_any = [], 0
        for seed in range(320):
            run = orthrus_generate(c, prompt, 4, block_size=4, temperature=1.5, top_k=6, seed=seed)
            first.append(run.tokens[0])
            accepted_any += run.per_cycle[0]["accepted"] > 0
        fit = goodness_of_fit(first, p_ref)  # KeyError: a token outside the processed support
        assert fit["p_value"] > 1e-3, fit
        assert 0 < accepted_any < 320, accepted_any
        c.close()
    finally:
        model.close()
