"""`pyorthrus serve`: an OpenAI-compatible HTTP server that decodes with Orthrus.

Endpoints as llama-cpp-python's server has them (its request types are reused): /v1/chat/completions and
/v1/completions (whole or SSE-streamed), /v1/models, /health. One model, one context: requests run one at a time, in
the order they arrive (a single decode thread); a stream whose client disconnects is cancelled at the next decode
round. The cache keeps what the last generation left, and a prompt that starts with those tokens (the next turn of a
chat, a repeated system prompt) decodes only the rest (`Orthrus.generate`; the `orthrus` statistics say how many
prompt tokens were reused). Responses carry the usual `usage` plus an `orthrus` object with the decode statistics.

Sampling (temperature, top_k, top_p, min_p, seed) stays lossless: Orthrus samples exactly the distribution a plain AR
step samples. Features that would change the distribution in ways the verify rule does not cover (penalties, logit
bias, grammars, mirostat, logprobs, n > 1) are refused with a 400 rather than silently ignored. The option ranges are
the Python API's and the CLI's (pyorthrus.options), plus OpenAI's temperature ceiling of 2: a client written for the
OpenAI API never sends more, so a larger value is a mistake rather than a wish for noise.

Under abuse: a body over --max-body-bytes gets a 413 before any of it is parsed; validation, chat templating and
tokenization run off the event loop (so /health answers meanwhile); every error, 404 and 405 included, has the
OpenAI shape {"error": {"message", "type", "param", "code"}}; with --api-key the API docs (/docs, /redoc,
/openapi.json) are off, since a browser could not send the key to them; a shutdown (Ctrl-C, SIGTERM) cancels the
generation in progress, and every open stream ends with a finish_reason ("cancelled") and `data: [DONE]`. Each request
gets one line on stderr: method, path, status, tokens, seconds.
"""

import argparse
import asyncio
import hmac
import json
import os
import socket
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cli_options import add_model_arguments, open_model
from .errors import PyorthrusError
from .options import OptionError, check_max_tokens, check_sampling, utf8_text

SERVE_DEPENDENCIES = ("fastapi", "uvicorn", "sse_starlette", "pydantic")
CONCURRENCY = "one request at a time, in arrival order"
# request fields Orthrus cannot honour losslessly, with the values that mean "off"
UNSUPPORTED = {"repeat_penalty": (1.0,), "presence_penalty": (0.0,), "frequency_penalty": (0.0,),
               "logit_bias": (None, {}), "grammar": (None, ""), "mirostat_mode": (0,), "logprobs": (None, False, 0),
               "top_logprobs": (None, 0), "min_tokens": (0,), "n": (None, 1), "best_of": (None, 1),
               "echo": (False,), "suffix": (None, ""), "tools": (None, []), "functions": (None, []),
               "response_format": (None, {"type": "text"})}
MAX_TEMPERATURE = 2.0  # the OpenAI API's range is 0 ... 2
# 8 MiB holds the text of a million-token context (~4 bytes a token) with JSON escaping to spare: a larger body cannot
# be a prompt any model here takes, only memory and CPU spent on parsing it
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# seconds a refused body's rest is read and dropped before the 413 (loopback reads 50 MB in ~0.1 s)
LINGER_S = 1.0
API_KEY_VARIABLE = "PYORTHRUS_API_KEY"  # the key from the environment keeps it out of `ps` and shell history
# seconds uvicorn waits for open connections at shutdown; a stream needs one decode round to end after the signal
SHUTDOWN_GRACE_S = 3.0
# threads that check and tokenize requests: a long prompt does not hold up the next request's, and more would only
# take cores from the decode thread
PREPARE_THREADS = 2


class RequestError(Exception):
    """A bad request: answered with an OpenAI-style error object and this status code."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def error_body(message: str, code: str | None = None, param: str | None = None, status: int = 400) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_json(message: str, code: str | None = None, param: str | None = None, status: int = 400) -> bytes:
    """error_body as JSON bytes, non-ASCII escaped: a lone surrogate a client sent and a message quotes cannot make
    rendering the error fail."""
    return json.dumps(error_body(message, code, param, status)).encode()


def error_response(message: str, status: int = 400, code: str | None = None, param: str | None = None,
                   headers: dict | None = None):
    from starlette.responses import Response

    return Response(error_json(message, code, param, status), status, headers, media_type="application/json")


# -- ASGI middleware (pure ASGI: they see every request, 404s included, and streamed bodies as they arrive) ---------
class BodyLimit:
    """Answers a request body over `limit` bytes with a 413 before any of it is parsed or kept: at once when its
    Content-Length says so, else as soon as the bytes read pass the limit (chunked bodies). A body within the limit
    is read here and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            # a client waiting for "100 Continue" has sent nothing yet, and is answered without being asked for it
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive)
            return await self.refuse(send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                del body[:]  # not kept while the rest drains
                await _drain(receive)
                return await self.refuse(send)
            if not message.get("more_body", False):
                break
        handed = False

        async def replay():
            nonlocal handed
            if handed:  # after the body: disconnects, as the server reports them
                return await receive()
            handed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, send):
        body = error_json(f"the request body exceeds this server's limit of {self.limit} bytes (--max-body-bytes)",
                          "request_too_large", status=413)
        # connection: close: what the client may still send of the body is not read
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive) -> None:
    """Reads and drops the rest of a refused body, for at most LINGER_S: closing a connection the client is still
    sending on makes the kernel reset it, and a reset loses the 413 the client was sent (as nginx's lingering close
    knows). A client still sending after that gets the reset."""

    async def rest():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(rest(), LINGER_S)
    except asyncio.TimeoutError:
        pass


def log_note(request, **fields) -> None:
    """Adds fields (prompt and completion tokens, ...) to the request's log line."""
    request.scope.setdefault("state", {}).setdefault("log", {}).update(fields)


class RequestLog:
    """One line on stderr per request once its response has ended: method, path, status, the tokens the endpoint
    noted (log_note), seconds. Without a response (the client left first) the status reads "-"."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), "-"
        note = scope.setdefault("state", {}).setdefault("log", {})

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # the raw path keeps its %-escapes: a client cannot put a line break into the log
            path = scope.get("raw_path", scope["path"].encode()).decode("ascii", "backslashreplace")
            print(f"pyorthrus serve: {scope['method']} {path} {status} {_tokens(note)}"
                  f"{time.perf_counter() - start:.3f} s", file=sys.stderr, flush=True)


def _tokens(note: dict) -> str:
    if "prompt_tokens" not in note:
        return ""
    reused = f" ({note['reused_tokens']} reused)" if note.get("reused_tokens") else ""
    clamped = (f", max_tokens {note['asked_tokens']} cut to {note['max_tokens']} by the context"
               if note.get("asked_tokens", 0) > note["max_tokens"] else "")
    return (f"prompt {note['prompt_tokens']}{reused} + completion {note.get('completion_tokens', 0)} tokens"
            f"{clamped}, ")


# -- the model ----------------------------------------------------------------------------------------------------
def _longest_token_bytes(model) -> int:
    """The most bytes one token of the vocabulary spells (special tokens included): a text of n bytes is at least
    n / this many tokens, so a prompt far too long for the context is refused without tokenizing it."""
    return max(len(model.llm.detokenize([token], special=True)) for token in range(model.llm.n_vocab()))


class Slot:
    """The one model and context. Generations run on one worker thread, so they queue in arrival order."""

    def __init__(self, model, model_id: str):
        self.model, self.model_id = model, model_id
        self.longest_token_bytes = _longest_token_bytes(model)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orthrus-decode")
        # requests are checked and tokenized here (prepare()), beside the decode thread
        self.preparer = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="orthrus-prepare")
        self.waiting = 0
        self.busy = False
        self.served = self.cancelled = 0
        self.stopping = False  # shutting down: the generation in progress is cancelled, no other starts
        self.current = None  # the TextStream decoding now

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "block_size": self.model.block_size,
                "concurrency": CONCURRENCY, "busy": self.busy, "waiting": self.waiting, "served": self.served,
                "cancelled": self.cancelled}

    def close(self) -> None:
        """Wait for the threads that use the model, before it is freed."""
        for executor in (self.preparer, self.executor):
            executor.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        """Server shutdown (called from the signal handler): cancel the generation in progress at its next decode
        round, so its stream ends with a finish_reason, and start none of those waiting."""
        self.stopping = True
        if self.current is not None:
            self.current.cancel()

    async def run(self, start, events, disconnected):
        """Async iterator of the dicts `events(pieces)` yields, pieces = start() being a streaming.TextStream made and
        iterated on the decode thread. Stops (and cancels the generation at its next round) when the consumer
        stops or `disconnected()` turns true. Yields nothing when the server shuts down before its turn."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        state = {"pieces": None, "stopped": False}

        def send(kind, value=None):
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work():
            self.waiting -= 1
            if state["stopped"] or self.stopping:  # the client left while queued, or the server is stopping
                return send("end")
            self.busy = True
            try:
                pieces = state["pieces"] = self.current = start()
                if state["stopped"] or self.stopping:  # stop() may have run before self.current was set
                    pieces.cancel()
                for event in events(pieces):
                    send("event", event)
                self.served += 1
                self.cancelled += pieces.result is not None and pieces.result.finish_reason == "cancelled"
            except Exception as exc:  # reported to this request only; the server goes on
                send("error", exc)
            finally:
                self.busy, self.current = False, None
                send("end")

        self.waiting += 1
        self.executor.submit(work)
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await disconnected():
                        return
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            state["stopped"] = True
            if state["pieces"] is not None:
                state["pieces"].cancel()


# -- a request, checked and tokenized (off the event loop) -----------------------------------------------------------
def _valid_unicode(fields: dict) -> None:
    """JSON may spell a lone surrogate ("\\ud800"), which no UTF-8 text holds: refused by the field it is in."""
    for name, value in fields.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise RequestError(f"{name} holds invalid Unicode (a lone surrogate such as \\ud800): send UTF-8 text",
                               code="invalid_unicode", param=name) from None


def _token_limit(body) -> tuple[str, int | None]:
    """The completion's token limit and the field it came from. max_completion_tokens (what current OpenAI SDKs
    send; OpenAI deprecates max_tokens in its favour) wins when a request gives both."""
    limit = getattr(body, "max_completion_tokens", None)
    return ("max_completion_tokens", limit) if limit is not None else ("max_tokens", body.max_tokens)


def _option_error(exc: OptionError, field: str) -> RequestError:
    """An OptionError in the request's words: its field name and value."""
    return RequestError(f"{field} {exc.value!r}: {exc.requirement}", param=field)


def _checked(body, fields: dict, slot: Slot, chat: bool) -> None:
    if body.model not in (None, "", slot.model_id):
        raise RequestError(f"model {body.model!r} is not served here; this server serves {slot.model_id!r}",
                           code="model_not_found", param="model")
    for name, off in UNSUPPORTED.items():
        if name in fields and fields[name] not in off:
            raise RequestError(f"{name} is not supported by Orthrus decoding (it samples losslessly with "
                               "temperature, top_k, top_p, min_p and seed only)", code="unsupported", param=name)
    if chat and not body.messages:
        raise RequestError("messages must hold at least one message", param="messages")
    try:
        check_sampling(body.temperature, body.top_k, body.top_p, body.min_p, body.seed or 0)
    except OptionError as exc:
        raise _option_error(exc, exc.name) from None
    if body.temperature > MAX_TEMPERATURE:
        raise RequestError(f"temperature {body.temperature!r}: must be in [0, {MAX_TEMPERATURE:g}] (the OpenAI API's "
                           "range)", param="temperature")
    field, limit = _token_limit(body)
    if limit is not None:
        try:
            check_max_tokens(limit)
        except OptionError as exc:
            raise _option_error(exc, field) from None


def _prompt_text(slot: Slot, body, chat: bool) -> str:
    if not chat:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise RequestError("give one prompt per request", param="prompt")
        return prompts[0]
    for message in body.messages:
        if not isinstance(message.get("content") or "", str):
            raise RequestError("message content must be a string (this model reads text only)", param="messages")
    return slot.model.chat_prompt([{"role": m["role"], "content": m.get("content") or ""} for m in body.messages])


def _no_room(slot: Slot, chat: bool, n_prompt: int, at_least: bool = False) -> RequestError:
    model, n_ctx = slot.model, slot.model.llm.n_ctx()
    return RequestError(f"the prompt is {'at least ' if at_least else ''}{n_prompt} tokens; with block size "
                        f"{model.block_size} it leaves no room in the context of {n_ctx} tokens (start the server "
                        "with a larger --ctx-size)", code="context_length_exceeded",
                        param="messages" if chat else "prompt")


def _prompt_tokens(slot: Slot, body, chat: bool) -> list[int]:
    text = _prompt_text(slot, body, chat)
    n_bytes = len(text.encode())
    room = slot.model.llm.n_ctx() - slot.model.round_cells()
    if n_bytes > room * slot.longest_token_bytes:  # tokenizing megabytes would only prove what this proves
        raise _no_room(slot, chat, n_bytes // slot.longest_token_bytes, at_least=True)
    tokens = slot.model.tokenize(text)
    if not tokens:
        raise RequestError("the prompt is empty", param="prompt")
    return tokens


def _max_tokens(slot: Slot, body, chat: bool, n_prompt: int) -> tuple[int, int | None]:
    """(max_tokens to generate, what the request asked for): the request's limit cut to what the context holds (the
    reply then ends with finish_reason "length"); no limit given: up to the context's end."""
    room = slot.model.llm.n_ctx() - n_prompt - slot.model.round_cells()
    if room < 1:
        raise _no_room(slot, chat, n_prompt)
    asked = _token_limit(body)[1]
    return min(asked or room, room), asked


def prepare(slot: Slot, body, chat: bool) -> tuple[list[int], dict, int | None]:
    """(prompt tokens, generate() options, the max_tokens asked) of a request, or a RequestError. Runs on
    slot.preparer: on a large body, templating and tokenizing take seconds the event loop (and /health) must not
    wait for. Tokenizing reads only the vocabulary, never the context, so it may run while a generation decodes
    (llama.cpp's own server tokenizes on its HTTP threads the same way)."""
    fields = body.model_dump(exclude_none=True)
    _valid_unicode(fields)
    _checked(body, fields, slot, chat)
    prompt = _prompt_tokens(slot, body, chat)
    max_tokens, asked = _max_tokens(slot, body, chat, len(prompt))
    options = dict(max_tokens=max_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                   min_p=body.min_p, stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
                   seed=body.seed if body.seed is not None else time.time_ns() % 2 ** 31)
    return prompt, options, asked


def create_app(slot: Slot, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from llama_cpp.server import types
    from pydantic import Field
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException

    # llama-cpp-python's request types, with the repeat penalty off by default (Orthrus has none), and the token
    # limit current OpenAI SDKs send
    class CompletionRequest(types.CreateCompletionRequest):
        repeat_penalty: float = Field(default=1.0, ge=0.0)

    class ChatCompletionRequest(types.CreateChatCompletionRequest):
        repeat_penalty: float = Field(default=1.0, ge=0.0)
        max_completion_tokens: int | None = Field(default=None, description="The most tokens to generate; "
                                                  "wins over max_tokens (which OpenAI deprecates for it).")

    expected = f"Bearer {api_key}".encode()

    def authorize(request: Request) -> None:
        # the header's bytes as sent (starlette decodes them as Latin-1), so a UTF-8 key matches too; compare_digest:
        # the time a wrong key takes to refuse tells nothing about the right one
        sent = request.headers.get("authorization", "").encode("latin-1")
        if api_key is not None and not hmac.compare_digest(sent, expected):
            raise RequestError("invalid API key (send it as 'Authorization: Bearer KEY')", status=401,
                               code="invalid_api_key")

    docs = {} if api_key is None else dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="pyorthrus", description="Orthrus parallel decoding behind an OpenAI-compatible API", **docs)

    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        return error_response(str(exc), exc.status, exc.code, exc.param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such endpoint: {request.method} {request.url.path} (this server has "
                         "/v1/chat/completions, /v1/completions, /v1/models and /health)",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        codes = {404: "unknown_url", 405: "method_not_allowed"}
        return error_response(messages.get(exc.status_code, str(exc.detail)), exc.status_code,
                              codes.get(exc.status_code), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        problems, fields = [], []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                return error_response(f"malformed JSON body: {error.get('msg')}", code="json_invalid")
            where = [str(part) for part in error.get("loc", ())[1:]]
            fields += where[:1]
            problems.append(f"{'.'.join(where)}: {error.get('msg')}" if where else
                            f"body: {error.get('msg')} (send a JSON object, with Content-Type: application/json)")
        return error_response("; ".join(problems) or "invalid request", code="invalid_request",
                              param=fields[0] if fields else None)

    @app.exception_handler(Exception)
    async def internal_error(_, exc: Exception):
        return error_response(f"internal error: {exc}", 500)

    async def complete(request: Request, body, chat: bool):
        from .completions import Completion

        prompt, options, asked = await asyncio.get_running_loop().run_in_executor(slot.preparer, prepare, slot,
                                                                                  body, chat)
        log_note(request, prompt_tokens=len(prompt), max_tokens=options["max_tokens"], asked_tokens=asked or 0)
        completion = Completion(chat, slot.model_id)

        def start():
            return slot.model.generate(prompt, stream=True, **options)

        def noted(reply: dict) -> None:
            log_note(request, completion_tokens=reply["usage"]["completion_tokens"],
                     reused_tokens=reply["orthrus"].get("n_reused", 0))

        if body.stream:
            async def events():
                finished = False
                try:
                    async for chunk in slot.run(start, completion.chunks, request.is_disconnected):
                        finished = chunk["choices"][0]["finish_reason"] is not None
                        yield {"data": json.dumps(chunk)}
                        if finished:
                            noted(chunk)
                except Exception as exc:  # the response has begun: the error goes into the stream, as OpenAI's does
                    if not isinstance(exc, PyorthrusError):  # a bug: its trace goes to the log
                        traceback.print_exc()
                    yield {"data": error_json(f"internal error: {exc}", status=500).decode()}
                    return
                if not finished:  # the server stopped before this request's turn
                    yield {"data": json.dumps(completion.chunk(None, "cancelled"))}
                yield {"data": "[DONE]"}

            # after a shutdown signal, sse-starlette gives the stream this long to end on its own
            return EventSourceResponse(events(), shutdown_grace_period=SHUTDOWN_GRACE_S - 1)

        def whole(pieces):
            text = "".join(pieces)
            yield completion.whole(text, pieces.result)

        replies = slot.run(start, whole, request.is_disconnected)
        try:
            async for reply in replies:
                noted(reply)
                return reply
        finally:
            await replies.aclose()
        if slot.stopping:
            return error_response("the server is shutting down", 503, "server_shutting_down")
        return error_response("the client disconnected", 499)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def create_completion(request: Request, body: CompletionRequest):
        return await complete(request, body, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def create_chat_completion(request: Request, body: ChatCompletionRequest):
        return await complete(request, body, chat=True)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [{"id": slot.model_id, "object": "model", "owned_by": "pyorthrus",
                                            "permissions": []}]}

    @app.get("/health")
    async def health():
        return slot.health()

    return RequestLog(BodyLimit(app, max_body_bytes))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve a model with Orthrus decoding behind an OpenAI-compatible HTTP API "
                          "(/v1/chat/completions, /v1/completions, /v1/models, /health), the request and response "
                          "shapes of llama-cpp-python's server. Point Open WebUI, editors or the openai client at "
                          "http://HOST:PORT/v1. Requests run " + CONCURRENCY + ".")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 ... 65535 (0: any free port)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_VARIABLE}, which "
                             "keeps the key out of the process list; none: open to anyone who reaches the port). "
                             "With a key the API docs (/docs, /openapi.json) are off")
    parser.add_argument("--model-alias", default=None,
                        help="the model id clients send and /v1/models lists (default: the GGUF file's name)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                        help="refuse larger request bodies with a 413, before reading them (default: "
                             f"{DEFAULT_MAX_BODY_BYTES} = 8 MiB, the text of a million-token context with room for "
                             "JSON escaping)")
    add_model_arguments(parser)


def _missing_dependencies() -> list[str]:
    import importlib.util

    return [name for name in SERVE_DEPENDENCIES if importlib.util.find_spec(name) is None]


def _checked_arguments(args: argparse.Namespace) -> None:
    """Refused in one line before the model loads."""
    if not 0 <= args.port <= 65535:
        raise PyorthrusError(f"--port {args.port}: must be in 0 ... 65535 (0: any free port)")
    if args.max_body_bytes < 1:
        raise PyorthrusError(f"--max-body-bytes {args.max_body_bytes}: must be >= 1")
    for label, text in (("--host", args.host), ("--api-key", args.api_key), ("--model-alias", args.model_alias)):
        if text is not None:
            utf8_text(label, text)


def _listener(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        raise PyorthrusError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    except (UnicodeError, TypeError):  # a name the IDNA codec refuses ("encoding of hostname failed")
        raise PyorthrusError(f"cannot listen on {host}:{port} (not a host name or address)") from None
    return listener


def _banner(model, model_id: str, url: str, api_key: str | None) -> str:
    # the key itself is never printed (terminals are shared, logs are kept): the curl line reads it from the
    # environment, as --api-key does by default
    auth = f" -H \"Authorization: Bearer ${API_KEY_VARIABLE}\"" if api_key else ""
    return (f"pyorthrus serve: {model_id} (block size {model.block_size}) at {url}/v1 — {CONCURRENCY}\n"
            f"try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n"
            "Ctrl-C stops the server.")


def _server(app, slot: Slot):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            slot.stop()  # first: the open streams end with a finish_reason within a decode round
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S))


def run(args: argparse.Namespace) -> int:
    missing = _missing_dependencies()
    if missing:
        raise PyorthrusError(f"serve needs {', '.join(missing)}: pip install 'pyorthrus[serve]'")
    _checked_arguments(args)
    if args.block_size is None:
        args.block_size = "auto"  # the honest default on any machine: Orthrus cycles only where they pay
    listener = _listener(args.host, args.port)
    with open_model(args) as model:
        # build the graphs, and with block size auto measure the pass costs, now rather than in the first request
        print("pyorthrus serve: warming up" + (" and measuring this machine's pass costs" if
              model.block_size == "auto" else "") + " ...", file=sys.stderr, flush=True)
        model.generate(model.tokenize("Hello"), max_tokens=4)
        model_id = args.model_alias or Path(model.llm.model_path).name
        slot = Slot(model, model_id)
        port = listener.getsockname()[1]
        url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{port}"
        print(_banner(model, model_id, url, args.api_key), flush=True)
        server = _server(create_app(slot, args.api_key, args.max_body_bytes), slot)
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: the way to stop a server
            pass
        slot.close()
    print("pyorthrus serve: stopped", file=sys.stderr)
    return 0
