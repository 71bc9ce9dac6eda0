"""Text out of a generation: `Orthrus.generate(stream=True)` returns a TextStream, an iterator of text pieces
that holds back text which could still become a stop string, and its `.result` (a Generation) once exhausted."""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterator

from .stats import GenerationStats


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOG token or stop string/token), "length", or "cancelled" (TextStream.cancel)
    stats: GenerationStats


class TextStream:
    """Iterator of text pieces; holds back text that could still become a stop string."""

    def __init__(self, owner, prompt, max_tokens, block_size, fused, temperature, top_k, top_p, min_p, stop,
                 stop_tokens, seed):
        self.owner, self.stop, self.block_size = owner, [s for s in stop if s], block_size
        self.prompt = owner.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.args = (max_tokens, block_size, fused, temperature, top_k, top_p, min_p, stop_tokens, seed)
        self.result: Generation | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """End the generation after the decode round in progress (finish_reason "cancelled")."""
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        owner = self.owner
        stats = GenerationStats(owner.mode, self.block_size if owner.mode == "orthrus" else 1,
                                n_prompt=len(self.prompt))
        tokens: list[int] = []
        # Text grows by each chunk's bytes (a token's text is its own piece, so this is detokenize(all tokens)); the
        # decoder keeps a character split across chunks until its last byte comes, and only the new text's
        # neighbourhood is searched for stop strings: a long generation costs linear time, not quadratic.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        longest_stop = max(map(len, self.stop), default=0)
        emitted = 0  # characters of text already yielded
        text, finish = "", "length"
        with owner._lock:
            for chunk in owner._chunks(self.prompt, *self.args, stats):
                tokens += chunk.tokens
                searched = max(0, len(text) - longest_stop + 1)  # a stop string may begin in the old text's tail
                text += decoder.decode(owner.llm.detokenize([t for t in chunk.tokens if not owner.engine.is_eog(t)]))
                cut = min((i for i in (text.find(s, searched) for s in self.stop) if i >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                elif chunk.finish_reason:
                    finish = chunk.finish_reason
                if self.cancelled:
                    finish = "cancelled"
                done = cut >= 0 or chunk.finish_reason is not None or self.cancelled
                if done and cut < 0:
                    text += decoder.decode(b"", final=True)  # an unfinished character at the very end: U+FFFD
                # Hold back a tail that is a prefix of a stop string.
                safe = len(text) if done else len(text) - held_back(text, self.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if done:
                    break
        self.result = Generation(text=text, tokens=tokens, finish_reason=finish, stats=stats)


def held_back(text: str, stops: list[str]) -> int:
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold
