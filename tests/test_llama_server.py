"""llama-server with `--spec-type orthrus` (patch 0020), built from the patched tree by `pyorthrus build --server`,
run on loopback with the embedded SmolLM2 + the shipped adapter and driven by the openai client. The reference is
the same binary without speculation: greedy replies must be equal; sampled tokens must follow the same distribution
(chi-square over many seeds: at temperature > 0 the drafts are drawn from the diffusion view's q and accepted by
speculative sampling, min(1, p/q) with the residual max(0, p - q) on rejection); where the server cannot hand p over
(a grammar) it matches tokens, one sampler draw per committed token as without speculation, so replies equal the
reference seed for seed; four slots decoding at once each give their solo answer; a wrong or broken adapter stops
the server at start-up with one error line."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyorthrus import assets
from pyorthrus.check.stats import homogeneity_test

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

PROMPTS = ["What is the capital of France?", "List the first ten prime numbers.",
           "Write a Python function that returns the n-th Fibonacci number.", "Name three colours."]
SYSTEM = {"role": "system", "content": assets.EMBEDDED_SYSTEM_PROMPT}


@pytest.fixture(scope="module")
def server_binary(tmp_path_factory):
    if os.environ.get("PYORTHRUS_TEST_LLAMA_SERVER"):  # a llama-server built from this series already
        return os.environ["PYORTHRUS_TEST_LLAMA_SERVER"]
    out = tmp_path_factory.mktemp("server")
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "build", "--server", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"llama-server: {out / 'llama-server'}" in result.stdout
    return out / "llama-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A llama-server subprocess on loopback (batch-invariant CPU settings, as pyorthrus's strict mode)."""

    def __init__(self, binary, *args: str, parallel: int = 1, model=None):
        self.port = _free_port()
        cmd = [str(binary), "-m", str(model or assets.smollm2_gguf()), "--host", "127.0.0.1", "--port", str(self.port),
               "-c", str(2048 * parallel), "-np", str(parallel), "-t", "2", "--no-repack", "--no-warmup", *args]
        # the log goes to a file: a pipe nobody reads fills after ~100 requests and blocks the server
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True,
                                        env={**os.environ, "GGML_CPU_TILED_MM": "0"})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise AssertionError(f"llama-server exited: {self.log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            self.close()
            raise AssertionError("llama-server never answered /health")
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=300)

    def chat(self, text: str, max_tokens: int = 64, **sampling) -> tuple[str, dict]:
        reply = self.client.chat.completions.create(model="smollm2", messages=[SYSTEM, {"role": "user",
                                                                                         "content": text}],
                                                    max_tokens=max_tokens, **sampling)
        return reply.choices[0].message.content, reply.model_extra.get("timings", {})

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def plain(server_binary):
    server = Server(server_binary)
    yield server
    server.close()


ORTHRUS = ("--spec-type", "orthrus", "--orthrus-adapter", str(assets.default_adapter()), "--spec-draft-n-max", "7")


@pytest.fixture(scope="module")
def orthrus(server_binary):
    server = Server(server_binary, *ORTHRUS)
    yield server
    server.close()


def test_greedy_replies_equal_the_server_without_speculation(plain, orthrus):
    drafted = accepted = 0
    for text in PROMPTS:
        expected, _ = plain.chat(text, temperature=0)
        got, timings = orthrus.chat(text, temperature=0)
        assert got == expected, text
        drafted += timings.get("draft_n", 0)
        accepted += timings.get("draft_n_accepted", 0)
    assert drafted > 0 and accepted / drafted > 0.2, (drafted, accepted)  # the adapter's drafts are taken


def _sample_tokens(server: Server, n: int, **sampling) -> tuple[list[tuple[int, ...]], dict]:
    """n completions of one story opening, seeds 0 ... n-1, four requests at a time: their tokens and the summed
    draft counts."""
    def one(seed):
        body = {"prompt": "Once upon a time, in a small village, there lived a", "n_predict": 4, "seed": seed,
                "return_tokens": True, "cache_prompt": True, **sampling}
        reply = httpx.post(f"{server.url}/completion", json=body, timeout=120).json()
        return tuple(reply["tokens"]), reply["timings"]

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(one, range(n)))
    counts = {key: sum(t.get(key, 0) for _, t in replies) for key in ("draft_n", "draft_n_accepted")}
    return [tokens for tokens, _ in replies], counts


def test_sampled_tokens_follow_the_server_without_speculation(server_binary):
    """Tokens 2 to 4 of each completion are decided by speculative sampling (token 1 comes from the prompt's own
    logits): their distributions over 320 seeds equal plain sampling's (chi-square homogeneity, p > 0.001 each).
    This is how a draft drawn with the sampler chain's own random stream was caught: it passed greedy tests and
    failed here at p = 1e-11."""
    sampling = dict(temperature=1.0, top_k=8, top_p=1.0, min_p=0.0)
    plain4, orthrus4 = Server(server_binary, parallel=4), Server(server_binary, *ORTHRUS, parallel=4)
    try:
        expected, _ = _sample_tokens(plain4, 320, **sampling)
        got, counts = _sample_tokens(orthrus4, 320, **sampling)
    finally:
        plain4.close()
        orthrus4.close()
    assert 0 < counts["draft_n_accepted"] < counts["draft_n"], counts  # accepted and rejected drafts both
    for position in (1, 2, 3):
        test = homogeneity_test([t[position] for t in expected], [t[position] for t in got])
        assert test["categories"] >= 3 and test["p_value"] > 1e-3, (position, test)


def test_sampled_replies_under_a_grammar_equal_the_server_without_speculation(plain, orthrus):
    """A grammar keeps p from the server (it resamples outside the chain), so drafts are matched by token: one
    draw of the slot's sampler per committed token, as without speculation, hence equal replies seed for seed."""
    for seed in range(3):
        sampling = dict(temperature=0.9, top_p=0.95, seed=seed,
                        extra_body={"grammar": 'root ::= [A-Za-z ,.]+'})
        expected, _ = plain.chat(PROMPTS[0], max_tokens=32, **sampling)
        got, timings = orthrus.chat(PROMPTS[0], max_tokens=32, **sampling)
        assert got == expected, seed
        assert timings.get("draft_n", 0) > 0


@pytest.mark.parametrize("weight_type", ["q8_0", "q4_k_m"])
def test_greedy_on_the_qwen3_user_files_equals_the_server_without_speculation(server_binary, qwen3_journey,
                                                                               weight_type):
    """A Qwen3 user's files (tests/conftest.py: a plain `qwen3` base GGUF made by the patched tree's converter and
    quantized, the adapter file beside it, the real Qwen3 vocabulary): greedy completions through `--spec-type
    orthrus --orthrus-adapter` equal the same server's without speculation, with drafts made."""
    base = qwen3_journey[weight_type]
    plain = Server(server_binary, model=base)
    spec = Server(server_binary, "--spec-type", "orthrus", "--orthrus-adapter", str(qwen3_journey["adapter"]),
                  "--spec-draft-n-max", "7", model=base)
    try:
        drafted = 0
        for prompt in ("The capital of France is", "def add(a, b):", "1, 2, 3, 4,"):
            body = {"prompt": prompt, "n_predict": 32, "temperature": 0, "return_tokens": True}
            want = httpx.post(f"{plain.url}/completion", json=body, timeout=120).json()
            got = httpx.post(f"{spec.url}/completion", json=body, timeout=120).json()
            assert got["tokens"] == want["tokens"], prompt
            drafted += got["timings"].get("draft_n", 0)
        assert drafted > 0
    finally:
        plain.close()
        spec.close()


@pytest.mark.parametrize("shape", ["tiny-qwen35", "tiny-qwen35moe"])
def test_greedy_on_a_hybrid_model_equals_the_server_without_speculation(server_binary, shape, tmp_path):
    """Qwen3.5/3.6 (patch 0027): a tiny random merged qwen35 / qwen35moe whose drafter takes its block back from the
    Gated DeltaNet layers through state snapshots (n_rs_seq = --spec-draft-n-max + 1). Greedy completions equal the
    same server's without speculation, with drafts made and accepted, one request at a time and two slots at once.
    Before the patch every request failed with HTTP 500 (the block could not be removed)."""
    from pyorthrus.bench.shapes import SHAPES
    from pyorthrus.testing.qwen35 import write_tiny_qwen35

    model = write_tiny_qwen35(tmp_path / f"{shape}.gguf", config=SHAPES[shape], block_size=8, twin_noise=0.0)
    prompts = ("The capital of France is", "def add(a, b):", "1, 2, 3, 4,", "Once upon a time")
    plain = Server(server_binary, model=model)
    spec = Server(server_binary, "--spec-type", "orthrus", "--spec-draft-n-max", "3", model=model, parallel=2)
    try:
        def complete(server, prompt):
            body = {"prompt": prompt, "n_predict": 32, "temperature": 0, "return_tokens": True}
            reply = httpx.post(f"{server.url}/completion", json=body, timeout=120)
            assert reply.status_code == 200, reply.text[:300]
            return reply.json()

        want = [complete(plain, prompt)["tokens"] for prompt in prompts]
        one_by_one = [complete(spec, prompt) for prompt in prompts]
        assert [got["tokens"] for got in one_by_one] == want
        assert sum(got["timings"].get("draft_n_accepted", 0) for got in one_by_one) > 0
        with ThreadPoolExecutor(2) as pool:
            at_once = list(pool.map(lambda prompt: complete(spec, prompt)["tokens"], prompts))
        assert at_once == want
    finally:
        plain.close()
        spec.close()


def test_four_slots_at_once_each_give_their_solo_answer(plain, server_binary):
    solo = [plain.chat(text, temperature=0)[0] for text in PROMPTS]
    server = Server(server_binary, *ORTHRUS, parallel=4)
    try:
        one_by_one = [server.chat(text, temperature=0)[1] for text in PROMPTS]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda text: server.chat(text, temperature=0), PROMPTS))
        assert [text for text, _ in together] == solo
        # every slot drafted in the shared diffusion pass, and its drafts were as good as when it drafted alone
        assert all(t.get("draft_n", 0) > 0 for _, t in together)

        def acceptance(timings):
            return sum(t["draft_n_accepted"] for t in timings) / sum(t["draft_n"] for t in timings)

        assert acceptance([t for _, t in together]) > 0.8 * acceptance(one_by_one)
        # the prompt cache across turns still works: the same conversation again reuses its prefix
        again = server.client.chat.completions.create(
            model="smollm2", messages=[SYSTEM, {"role": "user", "content": PROMPTS[0]}], max_tokens=64,
            temperature=0)
        assert again.choices[0].message.content == solo[0]
        assert again.model_extra["timings"]["cache_n"] > 0
    finally:
        server.close()


@pytest.mark.parametrize("case", ["missing", "truncated", "no-adapter"])
def test_a_bad_adapter_stops_the_server_at_start(server_binary, tmp_path, case):
    if case == "missing":
        args, words = ["--orthrus-adapter", str(tmp_path / "none.gguf")], "cannot open"
    elif case == "truncated":
        bad = tmp_path / "truncated.gguf"
        bad.write_bytes(assets.default_adapter().read_bytes()[:1000])
        args, words = ["--orthrus-adapter", str(bad)], str(bad)
    else:
        args, words = [], "--orthrus-adapter"
    with pytest.raises(AssertionError, match="llama-server exited") as failure:
        Server(server_binary, "--spec-type", "orthrus", *args)
    assert words in str(failure.value)
