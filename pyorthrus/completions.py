"""OpenAI-style completion objects, in the shapes llama_cpp.Llama returns: text and chat completions, whole or as
stream chunks. Each carries `usage` and an `orthrus` object with the decode statistics (the last chunk of a stream,
once they are known)."""
from __future__ import annotations

import time
import uuid
from typing import Iterator


def _usage(stats) -> dict:
    return {"prompt_tokens": stats.n_prompt, "completion_tokens": stats.n_generated,
            "total_tokens": stats.n_prompt + stats.n_generated}


class Completion:
    """One completion's identity: chat ("chat.completion") or text ("text_completion"), its id, time and model."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _object(self, kind: str, choice: dict) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}

    def whole(self, text: str, result) -> dict:
        """The complete response of a finished generation (a model.Generation)."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": result.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": result.finish_reason}
        return {**self._object("chat.completion" if self.chat else "text_completion", choice),
                "usage": _usage(result.stats), "orthrus": result.stats.as_dict()}

    def chunk(self, piece: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        """A stream chunk carrying `piece` (None: no text, e.g. the last chunk)."""
        if self.chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece is not None else {})
            return self._object("chat.completion.chunk", {"index": 0, "delta": delta, "logprobs": None,
                                                          "finish_reason": finish_reason})
        return self._object("text_completion", {"index": 0, "text": piece or "", "logprobs": None,
                                                "finish_reason": finish_reason})

    def chunks(self, pieces) -> Iterator[dict]:
        """Stream chunks of a streaming.TextStream: (chat: the role first), one per text piece, then the finish reason
        with usage and statistics."""
        if self.chat:
            yield self.chunk(None, first=True)
        for piece in pieces:
            yield self.chunk(piece)
        result = pieces.result
        yield {**self.chunk(None, result.finish_reason), "usage": _usage(result.stats),
               "orthrus": result.stats.as_dict()}
