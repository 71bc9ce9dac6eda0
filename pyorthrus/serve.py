"""`pyorthrus serve`: an OpenAI-compatible HTTP server that decodes with Orthrus.

Endpoints as llama-cpp-python's server has them (its request types are reused): /v1/chat/completions and
/v1/completions (whole or SSE-streamed), /v1/models, /health. One model, one context: requests run one at a time, in
the order they arrive (a single decode thread); a stream whose client disconnects is cancelled at the next decode
round, and every request starts from a clean cache (each generation prefills its own prompt). Responses carry the
usual `usage` plus an `orthrus` object with the decode statistics.

Sampling (temperature, top_k, top_p, min_p, seed) stays lossless: Orthrus samples exactly the distribution a plain AR
step samples. Features that would change the distribution in ways the verify rule does not cover (penalties, logit
bias, grammars, mirostat, logprobs, n > 1) are refused with a 400 rather than silently ignored.
"""

import argparse
import asyncio
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import PyorthrusError
from .generate import add_model_arguments, open_model

SERVE_DEPENDENCIES = ("fastapi", "uvicorn", "sse_starlette", "pydantic")
CONCURRENCY = "one request at a time, in arrival order"
# request fields Orthrus cannot honour losslessly, with the values that mean "off"
UNSUPPORTED = {"repeat_penalty": (1.0,), "presence_penalty": (0.0,), "frequency_penalty": (0.0,),
               "logit_bias": (None, {}), "grammar": (None, ""), "mirostat_mode": (0,), "logprobs": (None, False, 0),
               "top_logprobs": (None, 0), "min_tokens": (0,), "n": (None, 1), "best_of": (None, 1),
               "echo": (False,), "suffix": (None, ""), "tools": (None, []), "functions": (None, []),
               "response_format": (None, {"type": "text"})}


class RequestError(Exception):
    """A bad request: answered with an OpenAI-style error object and this status code."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def error_body(message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


class Slot:
    """The one model and context. Generations run on one worker thread, so they queue in arrival order."""

    def __init__(self, model, model_id: str):
        self.model, self.model_id = model, model_id
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orthrus-decode")
        self.waiting = 0
        self.busy = False
        self.served = self.cancelled = 0

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "block_size": self.model.block_size,
                "concurrency": CONCURRENCY, "busy": self.busy, "waiting": self.waiting, "served": self.served,
                "cancelled": self.cancelled}

    async def run(self, start, events, disconnected):
        """Async iterator of the dicts `events(pieces)` yields, pieces = start() being a streaming.TextStream made and
        iterated on the decode thread. Stops (and cancels the generation at its next round) when the consumer
        stops or `disconnected()` turns true."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        state = {"pieces": None, "stopped": False}

        def send(kind, value=None):
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work():
            self.waiting -= 1
            if state["stopped"]:  # the client left while queued
                return send("end")
            self.busy = True
            try:
                pieces = state["pieces"] = start()
                if state["stopped"]:
                    pieces.cancel()
                for event in events(pieces):
                    send("event", event)
                self.served += 1
                self.cancelled += pieces.result is not None and pieces.result.finish_reason == "cancelled"
            except Exception as exc:  # reported to this request only; the server goes on
                send("error", exc)
            finally:
                self.busy = False
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


def _checked(body, slot: Slot) -> None:
    if body.model not in (None, "", slot.model_id):
        raise RequestError(f"model {body.model!r} is not served here; this server serves {slot.model_id!r}",
                           code="model_not_found", param="model")
    fields = body.model_dump(exclude_none=True)
    for name, off in UNSUPPORTED.items():
        if name in fields and fields[name] not in off:
            raise RequestError(f"{name} is not supported by Orthrus decoding (it samples losslessly with "
                               "temperature, top_k, top_p, min_p and seed only)", code="unsupported", param=name)
    if body.temperature < 0:
        raise RequestError(f"temperature {body.temperature} must be >= 0", param="temperature")
    if body.max_tokens is not None and body.max_tokens < 1:
        raise RequestError(f"max_tokens {body.max_tokens} must be >= 1", param="max_tokens")


def _prompt_tokens(slot: Slot, body, chat: bool) -> list[int]:
    model = slot.model
    if chat:
        for message in body.messages:
            if not isinstance(message.get("content") or "", str):
                raise RequestError("message content must be a string (this model reads text only)",
                                   param="messages")
        text = model.chat_prompt([{"role": m["role"], "content": m.get("content") or ""} for m in body.messages])
    else:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise RequestError("give one prompt per request", param="prompt")
        text = prompts[0]
    tokens = model.tokenize(text)
    if not tokens:
        raise RequestError("the prompt is empty", param="prompt")
    return tokens


def _max_tokens(slot: Slot, body, n_prompt: int) -> int:
    """max_tokens, limited to what the context holds; no limit given: up to the context's end."""
    model = slot.model
    room = model.llm.n_ctx() - n_prompt - model.round_cells()
    if room < 1:
        raise RequestError(f"the prompt is {n_prompt} tokens; with block size {model.block_size} it leaves no room "
                           f"in the context of {model.llm.n_ctx()} tokens (start the server with a larger --ctx-size)",
                           code="context_length_exceeded", param="messages")
    return min(body.max_tokens or room, room)


def create_app(slot: Slot, api_key: str | None = None):
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from llama_cpp.server import types
    from pydantic import Field
    from sse_starlette.sse import EventSourceResponse

    # llama-cpp-python's request types, with the repeat penalty off by default (Orthrus has none)
    class CompletionRequest(types.CreateCompletionRequest):
        repeat_penalty: float = Field(default=1.0, ge=0.0)

    class ChatCompletionRequest(types.CreateChatCompletionRequest):
        repeat_penalty: float = Field(default=1.0, ge=0.0)

    def authorize(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise RequestError("invalid API key (send it as 'Authorization: Bearer KEY')", status=401,
                               code="invalid_api_key")

    app = FastAPI(title="pyorthrus", description="Orthrus parallel decoding behind an OpenAI-compatible API")

    @app.exception_handler(RequestError)
    async def request_error(_, exc: RequestError):
        return JSONResponse(error_body(str(exc), exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, exc: RequestValidationError):
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                return JSONResponse(error_body(f"malformed JSON body: {error.get('msg')}", "json_invalid"), 400)
            where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "body"
            problems.append(f"{where}: {error.get('msg')}")
        return JSONResponse(error_body("; ".join(problems) or "invalid request", "invalid_request"), 400)

    @app.exception_handler(Exception)
    async def internal_error(_, exc: Exception):
        return JSONResponse({"error": {"message": f"internal error: {exc}", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    async def complete(request: Request, body, chat: bool):
        from .completions import Completion

        _checked(body, slot)
        prompt = _prompt_tokens(slot, body, chat)
        options = dict(max_tokens=_max_tokens(slot, body, len(prompt)), temperature=body.temperature,
                       top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                       stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
                       seed=body.seed if body.seed is not None else time.time_ns() % 2 ** 31)
        completion = Completion(chat, slot.model_id)

        def start():
            return slot.model.generate(prompt, stream=True, **options)

        if body.stream:
            async def events():
                async for chunk in slot.run(start, completion.chunks, request.is_disconnected):
                    yield {"data": json.dumps(chunk)}
                yield {"data": "[DONE]"}

            return EventSourceResponse(events())

        def whole(pieces):
            text = "".join(pieces)
            yield completion.whole(text, pieces.result)

        replies = slot.run(start, whole, request.is_disconnected)
        try:
            async for reply in replies:
                return reply
        finally:
            await replies.aclose()
        return JSONResponse(error_body("the client disconnected"), status_code=499)

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

    return app


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve a model with Orthrus decoding behind an OpenAI-compatible HTTP API "
                          "(/v1/chat/completions, /v1/completions, /v1/models, /health), the request and response "
                          "shapes of llama-cpp-python's server. Point Open WebUI, editors or the openai client at "
                          "http://HOST:PORT/v1. Requests run " + CONCURRENCY + ".")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument("--model-alias", default=None,
                        help="the model id clients send and /v1/models lists (default: the GGUF file's name)")
    add_model_arguments(parser)


def _missing_dependencies() -> list[str]:
    import importlib.util

    return [name for name in SERVE_DEPENDENCIES if importlib.util.find_spec(name) is None]


def run(args: argparse.Namespace) -> int:
    missing = _missing_dependencies()
    if missing:
        raise PyorthrusError(f"serve needs {', '.join(missing)}: pip install 'pyorthrus[serve]'")
    import uvicorn

    if args.block_size is None:
        args.block_size = "auto"  # the honest default on any machine: Orthrus cycles only where they pay
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as exc:
        raise PyorthrusError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from exc
    with open_model(args) as model:
        # build the graphs, and with block size auto measure the pass costs, now rather than in the first request
        print("pyorthrus serve: warming up" + (" and measuring this machine's pass costs" if
              model.block_size == "auto" else "") + " ...", file=sys.stderr, flush=True)
        model.generate(model.tokenize("Hello"), max_tokens=4)
        model_id = args.model_alias or Path(model.llm.model_path).name
        slot = Slot(model, model_id)
        port = listener.getsockname()[1]
        url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{port}"
        auth = f" -H 'Authorization: Bearer {args.api_key}'" if args.api_key else ""
        print(f"pyorthrus serve: {model_id} (block size {model.block_size}) at {url}/v1 — {CONCURRENCY}\n"
              f"try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
              f"-d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n"
              "Ctrl-C stops the server.", flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(slot, args.api_key), log_level="warning",
                                               timeout_graceful_shutdown=2))
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: the way to stop a server
            pass
        slot.executor.shutdown(wait=True, cancel_futures=True)
    print("pyorthrus serve: stopped", file=sys.stderr)
    return 0
