"""`pyorthrus serve` under abuse, for real: one server subprocess (embedded SmolLM2 + adapter, an API key, the default
body limit) takes oversized and chunked bodies, invalid Unicode, out-of-range options, unknown paths and methods, and
finally a shutdown with a stream running and another queued. Its stderr is read as it comes (the request log)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_serve import MODEL_ID, start_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

API_KEY = "abuse-key-0123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BIG = 50 * 1000 * 1000  # bytes of the oversized body (the 50 MB)
DEFAULT_LIMIT = 8 * 1024 * 1024
N_CTX = 256  # small: the test that fills the context decodes it in a second


class Server:
    """A running server: its URL, process, the banner lines after the first, and the stderr lines so far."""

    def __init__(self, *extra: str):
        self.process, self.url = start_server(*extra)
        self.banner = [self.process.stdout.readline(), self.process.stdout.readline()]
        self.log: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))

    def log_line(self, fragment: str, timeout: float = 5.0) -> str:
        """The first stderr line holding fragment (waiting for it a little: it is written as the response ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.log if fragment in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no log line with {fragment!r} in {self.log[-20:]}")

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


@pytest.fixture(scope="module")
def server():
    running = Server("--api-key", API_KEY, "-c", str(N_CTX))
    yield running
    if running.process.poll() is None:  # the shutdown test, last, stops it itself
        running.process.send_signal(signal.SIGINT)
        running.process.wait(timeout=30)


def post(server: Server, body, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    return httpx.post(f"{server.url}{path}", content=content, timeout=60,
                      headers={**AUTH, "Content-Type": "application/json"}, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param
    return body["error"]


def poll_health(server: Server, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - start)
        time.sleep(0.02)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_gets_413_at_once_while_health_answers(server, chunked):
    payload = json.dumps({"messages": [{"role": "user", "content": "word " * (BIG // 5)}]}).encode()
    content = (payload[i:i + 2 ** 20] for i in range(0, len(payload), 2 ** 20)) if chunked else payload
    peak_before = server.peak_rss_mb()
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=poll_health, args=(server, stop, latencies))
    poller.start()
    try:
        start = time.perf_counter()
        response = post(server, content)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        poller.join()
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large" and str(DEFAULT_LIMIT) in error["message"]
    print(f"50 MB body ({'chunked' if chunked else 'Content-Length'}): 413 in {elapsed * 1e3:.0f} ms, /health "
          f"at most {max(latencies) * 1e3:.0f} ms meanwhile, peak RSS {peak_before:.0f} -> "
          f"{server.peak_rss_mb():.0f} MB")
    assert elapsed < 1.0 and latencies and max(latencies) < 0.5
    assert server.peak_rss_mb() < peak_before + 32  # refused without being kept
    assert "413" in server.log_line("POST /v1/chat/completions 413")


def test_a_body_within_the_limit_but_beyond_the_context_is_refused_without_tokenizing(server):
    start = time.perf_counter()
    response = post(server, {"messages": [{"role": "user", "content": "word " * (7 * 2 ** 20 // 5)}]})
    elapsed = time.perf_counter() - start
    error = assert_openai_error(response, 400, "messages")
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"]
    assert elapsed < 1.0  # tokenizing 7 MiB takes ~5 s of a core here


def test_max_completion_tokens_is_honoured_and_wins_over_max_tokens(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    question = [{"role": "user", "content": "Write a long story about a dragon."}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=question, temperature=0,
                                           max_completion_tokens=5)
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"
    both = post(server, {"messages": question, "temperature": 0, "max_tokens": 3, "max_completion_tokens": 6})
    assert both.json()["usage"]["completion_tokens"] == 6
    line = server.log_line("+ completion 5 tokens")
    assert line.startswith("pyorthrus serve: POST /v1/chat/completions 200 prompt ") and line.endswith(" s")


def test_max_tokens_beyond_the_context_is_cut_and_logged(server):
    prompt = "word " * (N_CTX - 40)  # a few dozen tokens are left
    response = post(server, {"prompt": prompt, "max_tokens": 5000, "temperature": 0}, path="/v1/completions")
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["choices"][0]["finish_reason"] == "length" and 0 < reply["usage"]["completion_tokens"] < 100
    assert f"max_tokens 5000 cut to {reply['usage']['completion_tokens']}" in server.log_line("max_tokens 5000")


@pytest.mark.parametrize("content, param, fragment", [
    ('{"temperature": 0}', "messages", "messages must hold at least one message"),
    ('{"messages": []}', "messages", "messages must hold at least one message"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages", "invalid Unicode"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"]}', "stop", "invalid Unicode"),
    ('{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model", "invalid Unicode"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature",
     "temperature nan: must be a finite number"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature",
     "temperature inf: must be a finite number"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": 100}', "temperature",
     "temperature 100.0: must be in [0, 2]"),
    ('{"messages": [{"role": "user", "content": "hi"}], "seed": -1}', "seed", "seed -1: must be in"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}', "max_completion_tokens",
     "max_completion_tokens 0: must be >= 1"),
])
def test_bad_values_get_400_naming_the_field(server, content, param, fragment):
    error = assert_openai_error(post(server, content), 400, param)
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_invalid_unicode_in_a_text_prompt_gets_400_and_no_traceback(server):
    error = assert_openai_error(post(server, '{"prompt": "a\\ud800b"}', path="/v1/completions"), 400, "prompt")
    assert "invalid Unicode" in error["message"]
    assert not [line for line in server.log if "Traceback" in line]


def test_every_error_has_the_openai_shape(server):
    assert_openai_error(httpx.get(f"{server.url}/v1/nope"), 404)
    assert_openai_error(httpx.post(f"{server.url}/nope", json={}), 404)
    not_allowed = httpx.get(f"{server.url}/v1/chat/completions", headers=AUTH)
    assert_openai_error(not_allowed, 405)
    assert not_allowed.headers["allow"] == "POST"
    assert_openai_error(post(server, "{not json"), 400)
    assert_openai_error(httpx.post(f"{server.url}/v1/chat/completions", content="messages=hi", headers=AUTH), 400)
    assert_openai_error(httpx.get(f"{server.url}/v1/models"), 401)
    assert "GET /v1/nope 404" in server.log_line("/v1/nope")


def test_docs_are_off_when_a_key_is_set(server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert_openai_error(httpx.get(f"{server.url}{path}", headers=AUTH), 404)
        assert_openai_error(httpx.get(f"{server.url}{path}"), 404)


def test_the_banner_never_prints_the_key(server):
    banner = "".join(server.banner)
    assert "curl" in banner and "$PYORTHRUS_API_KEY" in banner
    assert API_KEY not in banner and not [line for line in server.log if API_KEY in line]


@pytest.mark.parametrize("arguments, message", [
    (["--port", "99999"], "--port 99999: must be in 0 ... 65535 (0: any free port)"),
    (["--port", "-1"], "--port -1: must be in 0 ... 65535 (0: any free port)"),
    (["--max-body-bytes", "0"], "--max-body-bytes 0: must be >= 1"),
    (["--api-key", b"key\xff"], "--api-key: not UTF-8 text"),  # undecodable bytes from a shell
    (["--host", "\u00fc.."], "cannot listen on \u00fc..:8080 (not a host name or address)"),
])
def test_bad_serve_arguments_are_one_line_before_the_model_loads(arguments, message):
    done = subprocess.run([sys.executable, "-m", "pyorthrus", "serve", *arguments], capture_output=True, text=True,
                          timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"pyorthrus serve: error: {message}")


def _stream_lines(server: Server, body: dict, into: list[str]) -> None:
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60, headers=AUTH) as response:
        into += [line for line in response.iter_lines() if line.startswith("data: ")]


def test_shutdown_ends_open_streams_with_a_finish_reason_and_done(server):
    """Last: it stops the module's server. One stream is decoding, one waits for its turn."""
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 900, "stream": True,
            "temperature": 0}
    queued: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60, headers=AUTH) as response:
        lines = response.iter_lines()
        while '"content"' not in next(lines):
            pass
        waiter = threading.Thread(target=_stream_lines, args=(server, body, queued))
        waiter.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/health").json()["waiting"] < 1:
            assert time.monotonic() < deadline, "the second stream never queued"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGINT)
        running = [line for line in lines if line.startswith("data: ")]
    waiter.join(timeout=30)
    for stream in (running, queued):
        assert stream[-1] == "data: [DONE]"
        assert json.loads(stream[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "cancelled"
    assert server.process.wait(timeout=30) == 0
    assert server.log_line("stopped")
