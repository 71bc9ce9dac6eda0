"""`pyorthrus.Orthrus` under abuse (issue 33): threads, lifetimes, unfinished streams, bad option values, text cut
inside a character, and lossless prefix reuse across generations. Real patched llama.cpp, real SmolLM2 Q4_1 and its
shipped adapter. The cases that used to crash run in a child process, which must end cleanly."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pyorthrus import Orthrus, PyorthrusError, assets
from pyorthrus.options import OptionError

PROMPT = "The three primary colours are"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Orthrus(smollm2_path, assets.default_adapter(), n_ctx=1024, n_threads=2,
                 system_prompt=assets.EMBEDDED_SYSTEM_PROMPT) as llm:
        yield llm


def run_child(body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """body runs with `llm` (an Orthrus on the embedded model) defined; it must print OK at its end."""
    script = textwrap.dedent("""
        import gc, sys, threading, time
        from pyorthrus import Orthrus, PyorthrusError, assets
        llm = Orthrus(assets.smollm2_gguf(), assets.default_adapter(), n_ctx=1024, n_threads=2)
    """) + textwrap.dedent(body)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0 and child.stdout.strip().endswith("OK"), (child.returncode, child.stdout,
                                                                           child.stderr[-2000:])
    return child


def test_close_from_another_thread_while_a_stream_decodes_cancels_it():
    run_child("""
        story = llm.chat_prompt([{"role": "user", "content": "Write a long story about the sea."}])
        pieces = llm.generate(story, max_tokens=400, stream=True)
        got = []
        def read():
            for piece in pieces:
                got.append(piece)
        reader = threading.Thread(target=read)
        reader.start()
        while not got and reader.is_alive():
            time.sleep(0.01)
        assert got, "the story never started"
        llm.close()
        reader.join(30)
        assert not reader.is_alive()
        assert pieces.result.finish_reason == "cancelled", pieces.result.finish_reason
        assert pieces.result.stats.n_generated < 400
        try:
            llm.generate("Hello", max_tokens=4)
        except PyorthrusError as exc:
            assert "closed" in str(exc)
        print("OK")
    """)


def test_a_view_keeps_its_owner_alive():
    run_child("""
        view = Orthrus(assets.smollm2_gguf(), assets.default_adapter(), n_ctx=512, n_threads=2).ar_view()
        gc.collect()
        assert view.generate("The sky is", max_tokens=6).stats.n_generated == 6
        print("OK")
    """)


def test_a_view_of_a_closed_owner_refuses_to_decode():
    run_child("""
        view = llm.ar_view()
        llm.close()
        for call in (lambda: view.generate("The sky is", max_tokens=6), lambda: view.tokenize("x"),
                     lambda: view.next_token_logits([1, 2])):
            try:
                call()
                raise SystemExit("a closed model decoded")
            except PyorthrusError as exc:
                assert "closed" in str(exc), exc
        view.close()  # a view's close does nothing, twice is fine
        llm.close()
        print("OK")
    """)


def test_every_call_after_close_raises_one_clear_error(smollm2_path):
    llm = Orthrus(smollm2_path, assets.default_adapter(), n_ctx=256, n_threads=2)
    llm.close()
    llm.close()
    for call in (lambda: llm.generate(PROMPT, max_tokens=4), lambda: llm.generate(PROMPT, stream=True),
                 lambda: llm.create_chat_completion(CHAT), lambda: llm.tokenize("x"), lambda: llm.chat_prompt(CHAT),
                 lambda: llm.next_token_logits([1, 2])):
        with pytest.raises(PyorthrusError, match="closed"):
            call()


def test_a_partly_read_stream_never_deadlocks_its_thread():
    # a new generation on the same thread takes the context over: the old stream ends, "cancelled"
    run_child("""
        first = llm.generate("The three primary colours are", max_tokens=40, stream=True)
        pieces = iter(first)
        next(pieces)
        whole = llm.generate("The three primary colours are", max_tokens=24)
        assert whole.tokens == llm.ar_view().generate("The three primary colours are", max_tokens=24).tokens
        assert list(pieces) == [] and first.result.finish_reason == "cancelled"
        print("OK")
    """, timeout=60)


def test_two_streams_read_in_turns_end_cleanly(model):
    a, b = (model.generate(p, max_tokens=32, stream=True) for p in (PROMPT, "def fibonacci(n):\n"))
    ia, ib = iter(a), iter(b)
    next(ia)
    next(ib)  # takes the context over from a
    rest_a, rest_b = list(ia), list(ib)
    assert rest_a == [] and a.result.finish_reason == "cancelled"
    assert b.result.finish_reason == "length" and "".join(rest_b)


def test_a_stream_on_another_thread_waits_for_the_one_in_progress(model):
    import threading

    first = model.generate(PROMPT, max_tokens=24, stream=True)
    pieces = iter(first)
    next(pieces)
    out = {}
    other = threading.Thread(target=lambda: out.update(g=model.generate(PROMPT, max_tokens=8)))
    other.start()
    other.join(2)
    assert other.is_alive()  # waits: the context belongs to the first stream
    rest = list(pieces)
    other.join(30)
    assert first.result.finish_reason == "length" and rest
    assert out["g"].tokens == first.result.tokens[:8]


BAD_OPTIONS = [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-5), "max_tokens"),
    (dict(temperature=-1.0), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"), (dict(top_p=2.0), "top_p"), (dict(top_p=-0.5), "top_p"),
    (dict(top_k=-5), "top_k"), (dict(min_p=2.0), "min_p"), (dict(seed=-1), "seed"),
    (dict(block_size=0), "block_size"), (dict(block_size=17), "block_size"), (dict(block_size="x"), "block_size"),
]


@pytest.mark.parametrize("options,name", BAD_OPTIONS, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_generation_options_are_refused(model, options, name):
    with pytest.raises(OptionError) as raised:
        model.generate(PROMPT, **options)
    assert raised.value.name == name


@pytest.mark.parametrize("options,name", [(dict(n_threads=0), "n_threads"), (dict(n_threads=-1), "n_threads"),
                                          (dict(n_threads=10_000), "n_threads"), (dict(n_ctx=-1), "n_ctx"),
                                          (dict(block_size=0), "block_size"), (dict(n_ctx=8), "n_ctx")])
def test_bad_model_options_are_refused(smollm2_path, options, name):
    with pytest.raises(OptionError) as raised:
        Orthrus(smollm2_path, assets.default_adapter(), **{"n_ctx": 256, **options})
    assert raised.value.name == name


def test_a_tiny_context_is_fine_for_plain_ar(smollm2_path):
    with Orthrus(smollm2_path, mode="ar", n_ctx=8, n_threads=2) as ar:
        assert ar.generate("Hi", max_tokens=4).stats.n_generated == 4


def test_a_directory_as_model_says_so(tmp_path):
    with pytest.raises(PyorthrusError, match="is a directory"):
        Orthrus(tmp_path)


def test_text_cut_inside_a_character_never_ends_in_a_replacement_character(model):
    ar = model.ar_view()
    prompt = "日本語の文章: こんにちは、今日はいい天気ですね。私は"
    full = ar.generate(prompt, max_tokens=24)
    cut_inside = 0
    for n in range(1, 25):
        pieces = ar.generate(prompt, max_tokens=n, stream=True)
        text = "".join(pieces)
        assert "\ufffd" not in text and text == pieces.result.text
        assert full.text.startswith(text)
        raw = ar.llm.detokenize(pieces.result.tokens)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            cut_inside += 1
    assert cut_inside, "no cut fell inside a character: the test proves nothing with this prompt"


def test_prefix_reuse_is_bit_identical_to_a_fresh_decode(model):
    """Turn 2 of a chat reuses turn 1's cells: greedy and sampled output, and the logits after the reused prefix,
    are exactly those of a fresh decode (strict CPU build)."""
    turn1 = model.chat_prompt(CHAT)
    first = model.generate(turn1, max_tokens=40)
    messages = CHAT + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And animals?"}]
    prompt = model.tokenize(model.chat_prompt(messages))
    for options in (dict(), dict(temperature=0.8, top_p=0.95, seed=7)):
        model.generate(turn1, max_tokens=40, **options)
        reused = model.generate(prompt, max_tokens=40, **options)
        assert reused.stats.n_reused >= len(model.tokenize(turn1))
        model.engine.forget()
        fresh = model.generate(prompt, max_tokens=40, **options)
        assert fresh.stats.n_reused == 0
        assert reused.tokens == fresh.tokens
    # the cells themselves: logits after a reused prefix == after a fresh prefill, bit for bit
    model.generate(turn1, max_tokens=40)
    model.engine.prefill(prompt, reuse=True)
    reused_logits = model.engine.decode_one(prompt[-1]).copy()
    fresh_logits = model.next_token_logits(prompt)
    assert np.array_equal(reused_logits, fresh_logits)


def test_auto_profile_is_measured_once_and_reused(smollm2_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYORTHRUS_CACHE", str(tmp_path))
    runs = []
    for reprofile in (False, False, True):
        with Orthrus(smollm2_path, assets.default_adapter(), block_size="auto", n_ctx=512, n_threads=2,
                     reprofile=reprofile) as llm:
            result = llm.generate(PROMPT, max_tokens=8)
            runs.append(result.stats)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1
    measured, read, remeasured = (s.t_profile_s for s in runs)
    assert read < measured / 10 and remeasured > read * 10
    assert all("cycle costs" in s.auto_note for s in runs)
