"""Text out of a generation: `Orthrus.generate(stream=True)` returns a TextStream, an iterator of text pieces
that holds back text which could still become a stop string, and its `.result` (a Generation) once exhausted."""
from __future__ import annotations

import codecs
import contextlib
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterator

from .errors import PyorthrusError
from .stats import GenerationStats


@dataclass
class GenerationRequest:
    """One generation, its options checked (Orthrus.generate makes it): what a TextStream asks its model to decode,
    as llama_orthrus_params is what the C side's cycle takes."""
    prompt: list[int]
    max_tokens: int
    block_size: int | str  # K, or "auto"
    fused: bool
    cycle_params: dict  # llama_orthrus_params fields: sampling and tree verify
    stop: list[str]
    stop_tokens: list[int]


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOG token or stop string/token), "length", or "cancelled" (TextStream.cancel)
    stats: GenerationStats


class Session:
    """What a model and its ar_views share: one lock over the context (held for each decode round and for close,
    never between the rounds of a stream, so a stream left unread blocks nothing on its own thread), the stream
    whose generation the context holds now, and whether the model is closed."""

    def __init__(self):
        self.lock = threading.RLock()
        self._released = threading.Condition(self.lock)
        self.active = None  # the TextStream (or one-shot call) whose tokens the context holds between rounds
        self._active_thread: threading.Thread | None = None
        self.closed = False

    def claim(self, holder) -> None:
        """Under the lock: make holder the generation the context serves. A holder of another thread is waited for;
        an unfinished one of this thread is preempted (its next read ends it, "cancelled"): this thread cannot be
        reading it at this moment, so waiting would never end."""
        while True:
            if self.closed:
                raise PyorthrusError("this Orthrus model is closed")
            if self.active is None or self.active is holder:
                break
            if self._active_thread is threading.current_thread():
                self.active.preempted = True
                break
            self._released.wait()
        self.active, self._active_thread = holder, threading.current_thread()

    def release(self, holder) -> None:
        """Under the lock: holder no longer needs the context."""
        if self.active is holder:
            self.active = self._active_thread = None
            self._released.notify_all()

    def close(self) -> None:
        """Under the lock: no round will run again; waiting generations wake up and raise."""
        self.closed = True
        if self.active is not None:
            self.active.preempted = True
        self.active = self._active_thread = None
        self._released.notify_all()

    @contextlib.contextmanager
    def exclusive(self, owner):
        """The context for one call that runs start to end under the lock (e.g. next_token_logits)."""
        holder = SimpleNamespace(preempted=False)
        with self.lock:
            self.claim(holder)
            try:
                yield
            finally:
                owner.engine.forget()  # its decodes are not a generation's
                self.release(holder)


class TextStream:
    """Iterator of text pieces; holds back text that could still become a stop string, and the bytes of a
    character not complete yet. A character the last tokens leave unfinished (a generation cut by max_tokens or
    cancelled inside a multi-byte character) is left out of the text: no piece ever carries U+FFFD for it."""

    def __init__(self, owner, request: GenerationRequest):
        self.owner, self.request = owner, request
        self.stop = [s for s in request.stop if s]
        self.result: Generation | None = None
        self.cancelled = False
        self.preempted = False  # another generation took the context over (or the model was closed)

    def cancel(self) -> None:
        """End the generation after the decode round in progress (finish_reason "cancelled"), from any thread."""
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        owner, session, request = self.owner, self.owner.session, self.request
        stats = GenerationStats(owner.mode, request.block_size if owner.mode == "orthrus" else 1,
                                n_prompt=len(request.prompt))
        with session.lock:
            session.claim(self)
            try:
                rounds = owner.decode_rounds(request, stats)
            except BaseException:
                owner.engine.forget()
                session.release(self)
                raise
        tokens: list[int] = []
        # Text grows by each chunk's bytes (a token's text is its own piece, so this is detokenize(all tokens)); the
        # decoder keeps a character split across chunks until its last byte comes, and only the new text's
        # neighbourhood is searched for stop strings: a long generation costs linear time, not quadratic.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        longest_stop = max(map(len, self.stop), default=0)
        emitted = 0  # characters of text already yielded
        text, finish = "", "length"
        in_round = False  # an exception inside a round leaves the cache unknown; between rounds it holds the tokens
        try:
            while True:
                with session.lock:
                    interrupted = session.closed or self.preempted or self.cancelled
                    if not interrupted:
                        in_round = True
                        chunk = next(rounds)
                        in_round = False
                        tokens += chunk.tokens
                        new = owner.llm.detokenize([t for t in chunk.tokens if not owner.engine.is_eog(t)])
                if interrupted:
                    finish, done = "cancelled", True
                else:
                    searched = max(0, len(text) - longest_stop + 1)  # a stop string may begin in the old tail
                    text += decoder.decode(new)
                    cut = min((i for i in (text.find(s, searched) for s in self.stop) if i >= 0), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                    elif chunk.finish_reason:
                        finish = chunk.finish_reason
                    done = cut >= 0 or chunk.finish_reason is not None
                # Hold back a tail that is a prefix of a stop string.
                safe = len(text) if done else len(text) - held_back(text, self.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if done:
                    break
        finally:
            with session.lock:
                if session.active is self:
                    owner.engine.finish(None if in_round else (request.prompt + tokens)[:-1])
                    session.release(self)
        self.result = Generation(text=text, tokens=tokens, finish_reason=finish, stats=stats)


def held_back(text: str, stops: list[str]) -> int:
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold
