"""`pyorthrus serve` for real: the server runs as a subprocess on loopback with the embedded SmolLM2 + adapter
(block size auto, its default), clients are the official openai package and httpx. Every greedy reply is compared
with greedy AR decoding of the same prompt by the same model file in this process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyorthrus import assets

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

API_KEY = "test-key"
MODEL_ID = assets.SMOLLM2_FILE
N_CTX = 1024
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CLIENT_PROMPTS = ["Name three colours.", "What is 7 times 8?", "Say hello in French.", "Name a large ocean.",
                  "What do bees make?", "Count from 1 to 5.", "What is the opposite of hot?", "Name a planet."]


def start_server(*extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "pyorthrus", "serve", "--port", "0", "-t", "2",
                                "-c", str(N_CTX), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = process.stdout.readline()
    if " at http" not in first:
        process.kill()
        raise AssertionError(f"server did not start: {first!r} {process.stderr.read()}")
    url = first.split(" at ", 1)[1].split("/v1", 1)[0]
    for _ in range(100):  # uvicorn accepts shortly after the banner
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server never answered /health")


@pytest.fixture(scope="module")
def server():
    process, url = start_server("--api-key", API_KEY)
    yield url
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ar_model(smollm2_path):
    from pyorthrus.model import Orthrus

    with Orthrus(smollm2_path, assets.default_adapter(), n_ctx=N_CTX, n_threads=2,
                 system_prompt=assets.EMBEDDED_SYSTEM_PROMPT) as model:
        yield model.ar_view()


def ar_chat_reply(ar_model, messages, max_tokens: int) -> str:
    return ar_model.generate(ar_model.tokenize(ar_model.chat_prompt(messages)), max_tokens=max_tokens).text


def test_openai_client_chat_stream_and_completion_equal_ar(client, ar_model):
    expected = ar_chat_reply(ar_model, MESSAGES, 24)
    assert "Paris" in expected
    reply = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, temperature=0, max_tokens=24)
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens == reply.model_extra["orthrus"]["n_generated"] > 0
    assert reply.model_extra["orthrus"]["block_size"] == "auto"
    stream = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, temperature=0, max_tokens=24,
                                            stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].model_extra["orthrus"]["n_generated"] == reply.usage.completion_tokens
    prompt = "The three primary colours are"
    text = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0, max_tokens=16)
    assert text.choices[0].text == ar_model.generate(prompt, max_tokens=16).text
    assert [m.id for m in client.models.list()] == [MODEL_ID]


def test_eight_concurrent_clients_get_their_own_ar_replies(client, ar_model):
    expected = {p: ar_chat_reply(ar_model, [{"role": "user", "content": p}], 20) for p in CLIENT_PROMPTS}
    got: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def one_client(number: int, prompt: str) -> None:
        try:
            for request in range(5):
                messages = [{"role": "user", "content": prompt}]
                if (number + request) % 2:
                    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0,
                                                            max_tokens=20, stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in stream)
                else:
                    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0,
                                                           max_tokens=20)
                    text = reply.choices[0].message.content
                got.append((prompt, text))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i, p)) for i, p in enumerate(CLIENT_PROMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(got) == 40
    assert all(text == expected[prompt] for prompt, text in got), [(p, t) for p, t in got if t != expected[p]]


def _first_chunk_seconds(server: str, messages, max_tokens: int) -> float:
    """Seconds until a streamed request's first text chunk (the stream is then read to its end)."""
    start, first = time.perf_counter(), None
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        lines = []
        for line in response.iter_lines():
            if first is None and '"content"' in line:
                first = time.perf_counter() - start
            lines += [line] if line.startswith("data: ") else []
    assert first is not None and lines[-1] == "data: [DONE]"
    return first


def test_a_client_cut_off_mid_stream_frees_the_slot(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    idle = _first_chunk_seconds(server, MESSAGES, 8)  # on an idle server
    before = httpx.get(f"{server}/health").json()["cancelled"]
    long = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=long, timeout=120, headers=headers) as response:
        lines = response.iter_lines()
        while '"content"' not in next(lines):
            pass
    # the rest of that story would take many seconds; the next request must not wait for it
    waited = _first_chunk_seconds(server, MESSAGES, 8)
    print(f"first chunk of a request: {idle * 1e3:.0f} ms on an idle server, {waited * 1e3:.0f} ms right after "
          "a cut-off stream")
    assert waited < idle + 1.0
    health = httpx.get(f"{server}/health").json()
    assert health["cancelled"] == before + 1 and health["waiting"] == 0


@pytest.mark.parametrize("body, status, fragment", [
    ("{not json", 400, "malformed JSON"),
    ({"model": "gpt-4", "messages": MESSAGES}, 400, "is not served here"),
    ({"messages": [{"role": "user", "content": "word " * 1200}]}, 400, "no room in the context"),
    ({"messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens 0: must be >= 1"),
    ({"messages": MESSAGES, "temperature": -1}, 400, "temperature -1.0: must be >= 0"),
    ({"messages": MESSAGES, "top_p": 2}, 400, "top_p"),
    ({"messages": MESSAGES, "top_k": -3}, 400, "top_k"),
    ({"messages": MESSAGES, "repeat_penalty": 1.3}, 400, "repeat_penalty is not supported"),
    ({"messages": "hello"}, 400, "messages"),
])
def test_bad_requests_get_openai_style_errors(server, body, status, fragment):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/health").status_code == 200


def test_wrong_api_key_is_refused(server):
    response = httpx.post(f"{server}/v1/chat/completions", json={"messages": MESSAGES},
                          headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and "invalid API key" in response.json()["error"]["message"]
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_ctrl_c_stops_the_server_cleanly_mid_generation():
    process, url = start_server()
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        while '"content"' not in next(lines):
            pass
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    assert "stopped" in process.stderr.read()
