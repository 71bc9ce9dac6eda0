"""The high-level `pyorthrus.Orthrus` class on the real patched build and SmolLM2 Q4_1 (+ an identity adapter)."""
from __future__ import annotations

import codecs
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from pyorthrus import Orthrus, PyorthrusError, assets

from pyorthrus.strict import BATCH_INVARIANT_REPACKED_TYPES, repack_is_strict
from pyorthrus.testing.adapters import write_adapter, write_identity_adapter

PROMPTS = [
    "The three primary colours are",
    "def fibonacci(n):\n",
]


@pytest.fixture(scope="module")
def identity_adapter(tmp_path_factory, smollm2_path):
    return write_identity_adapter(smollm2_path, tmp_path_factory.mktemp("adapter") / "identity.gguf", block_size=16)


@pytest.fixture(scope="module")
def orthrus(smollm2_path, identity_adapter):
    with Orthrus(smollm2_path, identity_adapter, block_size=8, n_ctx=512, n_threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def ar(smollm2_path):
    with Orthrus(smollm2_path, mode="ar", n_ctx=512, n_threads=2) as model:
        yield model


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ar_mode_equals_llama_cpp_python_greedy(ar, smollm2, prompt):
    ours = ar.generate(prompt, max_tokens=40)
    theirs = smollm2.create_completion(prompt, max_tokens=40, temperature=0.0)
    assert ours.text == theirs["choices"][0]["text"]
    assert ours.stats.n_ar_steps == ours.stats.n_generated and ours.stats.n_cycles == 0  # one token per step


@pytest.mark.parametrize("prompt", PROMPTS)
def test_orthrus_greedy_equals_ar_greedy(orthrus, ar, prompt):
    expected = ar.generate(prompt, max_tokens=48)
    got = orthrus.generate(prompt, max_tokens=48)
    assert got.tokens == expected.tokens
    assert got.text == expected.text
    stats = got.stats
    assert stats.n_generated == len(got.tokens)
    assert stats.n_cycles < stats.n_generated  # drafts were accepted: equality alone holds if none ever is
    assert sum(stats.accepted.values()) == stats.n_cycles
    # every cycle commits its accepted drafts plus one bonus token (the last cycle may be cut by max_tokens)
    assert sum(k * v for k, v in stats.accepted.items()) + stats.n_cycles >= stats.n_generated


def test_tree_verify_equals_ar_and_reports_its_tree(smollm2_path, ar):
    """Orthrus(tree=N) with the shipped adapter: greedy output is AR's, more tokens per cycle than the chain of the
    same K, and the stats say what the tree did; a per-call tree=0 runs the chain; bad trees are OptionErrors."""
    with Orthrus(smollm2_path, assets.default_adapter(), n_ctx=512, n_threads=2, tree=16) as model:
        prompt = model.chat_prompt([{"role": "user", "content": "List the first ten prime numbers."}])
        expected = ar.generate(prompt, max_tokens=64)
        tree = model.generate(prompt, max_tokens=64)
        chain = model.generate(prompt, max_tokens=64, tree=0)
        assert tree.tokens == chain.tokens == expected.tokens
        stats = tree.stats.as_dict()
        assert stats["tree"] == 16 and stats["n_tree_nodes"] == 16 * tree.stats.n_cycles
        assert stats["n_offchain"] > 0 and stats["n_redecoded"] > 0
        assert chain.stats.n_tree_nodes == 0 and chain.stats.tree == 0
        assert tree.stats.tokens_per_cycle > chain.stats.tokens_per_cycle
        for bad, words in ((-1, "integer >= 0"), (1000, "n_batch")):
            with pytest.raises(PyorthrusError, match=words):
                model.generate(prompt, max_tokens=4, tree=bad)
        with pytest.raises(PyorthrusError, match="budgets are the model's"):
            model.generate(prompt, max_tokens=4, block_size="auto", tree=8)
        with pytest.raises(PyorthrusError, match="not fused"):
            model.generate(prompt, max_tokens=4, fused=True)


def test_stream_yields_the_same_text(orthrus):
    whole = orthrus.generate(PROMPTS[1], max_tokens=40)
    pieces = orthrus.generate(PROMPTS[1], max_tokens=40, stream=True)
    assert "".join(pieces) == whole.text
    assert pieces.result.tokens == whole.tokens


@pytest.mark.parametrize("question", ["Translate 'thank you' into Japanese.", "Write three emoji."])
def test_stream_of_characters_split_across_tokens(ar, orthrus, question):
    """Japanese and emoji characters are 3-4 bytes that SmolLM2 emits one or two bytes per token: one token per
    chunk (AR) splits them across chunks, and the stream must still equal the whole text, with no stray U+FFFD."""
    for model in (ar, orthrus):
        prompt = model.chat_prompt([{"role": "user", "content": question}])
        whole = model.generate(prompt, max_tokens=32)
        assert any(ord(c) > 0x2000 for c in whole.text), whole.text  # the question did draw such characters
        raw = model.llm.detokenize([t for t in whole.tokens if not model.engine.is_eog(t)])
        # every complete character; one that max_tokens cut at the very end is left out, never U+FFFD
        assert whole.text == codecs.getincrementaldecoder("utf-8")("replace").decode(raw)
        assert "".join(model.generate(prompt, max_tokens=32, stream=True)) == whole.text


def test_stop_string_cuts_exactly(orthrus):
    full = orthrus.generate(PROMPTS[1], max_tokens=48).text
    middle = len(full) // 2 + (len(full[len(full) // 2:]) - len(full[len(full) // 2:].lstrip()))
    stop = full[middle:middle + 3]  # three visible characters from the middle, wherever tokens split them
    assert len(stop) == 3 and stop.strip(), full
    cut = orthrus.generate(PROMPTS[1], max_tokens=48, stop=[stop])
    assert cut.text == full[:full.find(stop)]
    assert cut.finish_reason == "stop"
    streamed = orthrus.generate(PROMPTS[1], max_tokens=48, stop=[stop], stream=True)
    assert "".join(streamed) == cut.text


def test_chat_completion_has_llama_cpp_python_shape(orthrus):
    reply = orthrus.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=16)
    assert reply["object"] == "chat.completion"
    message = reply["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert reply["usage"]["completion_tokens"] == reply["orthrus"]["n_generated"] > 0
    chunks = list(orthrus.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=16,
                                                 stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == reply["choices"][0]["finish_reason"]


def test_context_overflow_is_refused_before_decoding(orthrus):
    with pytest.raises(PyorthrusError, match="exceeds the context"):
        orthrus.generate("hello", max_tokens=1000)


def test_adapter_for_another_base_is_rejected(smollm2_path, tmp_path):
    wrong = write_adapter(smollm2_path, tmp_path / "wrong.gguf", n_layers=12)
    with pytest.raises(PyorthrusError, match="wrong.gguf"):
        Orthrus(smollm2_path, wrong, n_ctx=256)


def test_missing_files_and_bad_modes_are_clear_errors(smollm2_path, tmp_path):
    with pytest.raises(PyorthrusError, match="model file not found"):
        Orthrus(tmp_path / "nope.gguf")
    with pytest.raises(PyorthrusError, match="no Orthrus diffusion weights"):
        Orthrus(smollm2_path, n_ctx=256)
    with pytest.raises(PyorthrusError, match="unknown mode"):
        Orthrus(smollm2_path, mode="fast", n_ctx=256)


@pytest.fixture(scope="module")
def smollm2_q4_k_m(smollm2_path, tmp_path_factory):
    """SmolLM2 requantized to Q4_K_M: the K-quant type whose fast CPU kernels (tiled matmul, repacked weights) are
    not batch-invariant."""
    import llama_cpp

    out = tmp_path_factory.mktemp("q4km") / "smollm2.Q4_K_M.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True, 2
    assert llama_cpp.llama_model_quantize(str(smollm2_path).encode(), str(out).encode(), params) == 0
    return out


def test_strict_is_the_cpu_default_and_reproduces_ar_on_a_k_quant(smollm2_q4_k_m, tmp_path):
    adapter = write_identity_adapter(smollm2_q4_k_m, tmp_path / "identity.gguf", block_size=16)
    with Orthrus(smollm2_q4_k_m, adapter, block_size=16, n_ctx=512, n_threads=2) as model:
        assert model.strict and not model.llm.model_params.use_extra_bufts
        for prompt in PROMPTS:
            assert model.generate(prompt, max_tokens=48).tokens == model.ar_view().generate(prompt,
                                                                                           max_tokens=48).tokens
    with Orthrus(smollm2_q4_k_m, assets.default_adapter(), block_size=4, n_ctx=512, n_threads=2, fused=True) as fused:
        for prompt in PROMPTS:  # fused cycles (2K-token verify passes) on the K-quant too
            assert fused.generate(prompt, max_tokens=48).tokens == fused.ar_view().generate(prompt,
                                                                                           max_tokens=48).tokens
    with Orthrus(smollm2_q4_k_m, assets.default_adapter(), n_ctx=512, n_threads=2, tree=16) as tree:
        offchain = 0
        for prompt in PROMPTS:  # tree verify, off-chain paths re-laid, on the K-quant too
            got = tree.generate(prompt, max_tokens=48)
            assert got.tokens == tree.ar_view().generate(prompt, max_tokens=48).tokens
            offchain += got.stats.n_offchain
        assert offchain > 0
    with Orthrus(smollm2_q4_k_m, adapter, n_ctx=256, strict=False) as fast:
        assert not fast.strict and fast.llm.model_params.use_extra_bufts


def _fresh_process(code: str) -> str:
    """Run code in a new Python with neither of the process settings tests/conftest.py makes, and return stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("GGML_CPU_TILED_MM", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_strict_load_sets_the_process_up_itself(smollm2_q4_k_m, tmp_path):
    """`import pyorthrus` changes nothing; a strict load switches ggml-cpu's tiled K-quant matmul off before its
    first matmul, so a library user's fresh process reproduces AR on a K-quant with no setting of its own."""
    adapter = write_identity_adapter(smollm2_q4_k_m, tmp_path / "identity.gguf", block_size=16)
    _fresh_process(f"""
        import os
        from pyorthrus import Orthrus
        assert "GGML_CPU_TILED_MM" not in os.environ
        with Orthrus({str(smollm2_q4_k_m)!r}, {str(adapter)!r}, block_size=16, n_ctx=512, n_threads=2) as model:
            assert os.environ["GGML_CPU_TILED_MM"] == "0"
            for prompt in {PROMPTS!r}:
                assert model.generate(prompt, max_tokens=48).tokens == \
                    model.ar_view().generate(prompt, max_tokens=48).tokens, prompt
        """)


def test_a_strict_load_after_a_non_strict_one_warns(smollm2_path):
    stderr = _fresh_process(f"""
        from pyorthrus import Orthrus
        Orthrus({str(smollm2_path)!r}, mode="ar", n_ctx=256, strict=False).close()
        Orthrus({str(smollm2_path)!r}, mode="ar", n_ctx=256).close()
        """)
    assert "a non-strict model ran earlier in this process" in stderr


def test_strict_loads_change_only_their_own_thread():
    """strict_model_loads turns weight repacking off for loads on its own thread; a load on another thread at the
    same moment, and every load after it, gets llama.cpp's defaults."""
    import llama_cpp.llama_cpp as lowlevel

    from pyorthrus.strict import strict_model_loads

    seen = {}

    def other_thread():
        seen["other thread"] = lowlevel.llama_model_default_params().use_extra_bufts

    with strict_model_loads(repack=False):
        seen["inside"] = lowlevel.llama_model_default_params().use_extra_bufts
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        with strict_model_loads(repack=True):
            seen["nested, repacking"] = lowlevel.llama_model_default_params().use_extra_bufts
        seen["inside again"] = lowlevel.llama_model_default_params().use_extra_bufts
    seen["after"] = lowlevel.llama_model_default_params().use_extra_bufts
    assert seen == {"inside": False, "other thread": True, "nested, repacking": True, "inside again": False,
                    "after": True}


@pytest.mark.skipif(not BATCH_INVARIANT_REPACKED_TYPES, reason="no repacked type is known batch-invariant here")
def test_strict_keeps_repacking_where_it_is_batch_invariant(smollm2_path, orthrus):
    """The embedded Q4_1 file's only repacked tensor is its tied Q8_0 output head, whose repacked kernels give a
    K-token pass the rows of K one-token steps bit for bit (flash attention off and on): so strict loads it
    repacked (about 20% faster steps), and every greedy Orthrus == AR test on it runs repacked."""
    from pyorthrus.testing.harness import Context, Model

    assert repack_is_strict({"Q4_1", "Q8_0", "F32"}) and not repack_is_strict({"Q4_K", "Q8_0"})
    assert orthrus.strict and orthrus.llm.model_params.use_extra_bufts
    model = Model(smollm2_path, use_extra_bufts=True)
    try:
        tokens = model.chat_prompt("Tell me about the sea.") + model.tokenize(
            " The sea covers most of the planet and holds more life than any forest on land, from whales to tiny "
            "plankton drifting near the surface.", add_special=False)
        n0 = len(tokens) - 16
        for flash_attn in (False, True):
            ctx = Context(model, n_ctx=256, n_batch=32, flash_attn=flash_attn, n_threads=2)
            try:
                for k in (4, 16):
                    ctx.clear()
                    ctx.prefill(tokens[:n0 + 1])
                    assert ctx.decode(tokens[n0:n0 + k], n0, all_logits=True) == 0
                    pass_rows = ctx.logits_rows(k)
                    ctx.clear()
                    ctx.prefill(tokens[:n0 + 1])
                    for i in range(k):
                        assert ctx.decode([tokens[n0 + i]], n0 + i) == 0
                        assert (ctx.logits(0) == pass_rows[i]).all(), (flash_attn, k, i)
            finally:
                ctx.close()
    finally:
        model.close()


# Flags where llama.cpp's order (filters on the raw logits, temperature last) and a temperature-first order keep
# very different token sets: a hot temperature flattens the distribution, so filtering after it keeps many more.
@pytest.mark.parametrize("flags", [dict(temperature=1.6, top_p=0.5), dict(temperature=2.0, top_k=12, min_p=0.1)],
                         ids=["temp-topp", "temp-topk-minp"])
def test_ar_sampling_follows_llama_cpp_python_for_the_same_flags(ar, smollm2, flags):
    """The distribution our sampler draws from (the C step behind every sampled AR step and, as p and q, every
    sampled cycle) is llama.cpp's for the same flags: 400 first tokens after a prompt from Orthrus.ar_view() and
    400 from llama-cpp-python's own Llama.generate, one seed each, pass a chi-square homogeneity test (alpha 0.001)."""
    from pyorthrus.check.sampling import draw_runs
    from pyorthrus.check.stats import homogeneity_test

    prompt = ar.tokenize("My favourite animal is the")
    sampling = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, **flags}
    seeds = range(400)  # with the old temperature-first order: chi-square 612 on 34 dof at 600 seeds
    ours = [run[0] for run in draw_runs(ar, prompt, seeds, 1, sampling)]
    theirs = []
    for seed in seeds:
        smollm2.set_seed(seed)
        theirs.append(next(smollm2.generate(prompt, temp=sampling["temperature"], top_k=sampling["top_k"],
                                            top_p=sampling["top_p"], min_p=sampling["min_p"], repeat_penalty=1.0)))
    result = homogeneity_test(ours, theirs)
    assert result["dof"] >= 3, result  # the flags leave a real choice, so the test has something to see
    assert result["p_value"] > 1e-3, result
