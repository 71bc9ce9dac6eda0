"""`pyorthrus chat`: an interactive chat using the model's chat template. /stats, /reset, /quit.

Ctrl-C during a reply cancels that reply; the conversation goes on as it was before the message that asked for it
(neither the message nor the partial reply is kept). Ctrl-C at the prompt says how to leave; twice in a row, Ctrl-D
or /quit leave. With readline (not on Windows) lines can be edited and earlier ones recalled.
"""
from __future__ import annotations

import argparse
import sys

from .cli import error_text
from .cli_options import (add_decoding_arguments, add_model_arguments, check_room, open_model, sampling_options,
                          stats_footer)
from .errors import PyorthrusError
from .options import utf8_text

HELP = "commands: /stats (last reply's statistics), /reset (forget the conversation), /quit"
QUIT = ("/quit", "/exit")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Chat with a model interactively, decoding with Orthrus. " + HELP
    parser.add_argument("-n", "--max-tokens", type=int, default=512, help="tokens per reply at most")
    add_model_arguments(parser)
    add_decoding_arguments(parser)


def _line_editing() -> None:
    """At a terminal, input() edits lines and recalls earlier ones once readline is imported (absent on Windows)."""
    if not sys.stdin.isatty():
        return
    try:
        import readline  # noqa: F401
    except ImportError:
        pass


def _read_line() -> str | None:
    """The next line typed, stripped; None to leave (Ctrl-D, or Ctrl-C twice in a row)."""
    interrupted = False
    while True:
        try:
            return input("> ").strip()
        except EOFError:
            print()
            return None
        except KeyboardInterrupt:
            if interrupted:
                print()
                return None
            interrupted = True
            print("\n(Ctrl-C again, Ctrl-D or /quit to leave)", file=sys.stderr)


def _reply(model, messages: list[dict], args: argparse.Namespace):
    """Stream the model's reply to messages; its Generation, or None when Ctrl-C cancelled it."""
    prompt = model.tokenize(model.chat_prompt(messages))
    check_room(model, len(prompt), args.max_tokens, f"the conversation is {len(prompt)} tokens", "/reset")
    pieces = model.generate(prompt, max_tokens=args.max_tokens, stream=True, **sampling_options(args))
    stream = iter(pieces)  # one iterator: after Ctrl-C it is read to its end, not started again
    try:
        for piece in stream:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        pieces.cancel()
        for _ in stream:  # the decode round in progress ends; its text is dropped with the rest of the reply
            pass
        print("\n(reply cancelled; the conversation is as it was before that message)", file=sys.stderr)
        return None
    print()
    return pieces.result


def run(args: argparse.Namespace) -> int:
    # typed bytes that are not UTF-8 reach us as lone surrogates (refused by utf8_text), not as a crash of input()
    sys.stdin.reconfigure(errors="surrogateescape")
    with open_model(args) as model:
        _line_editing()
        messages, last_stats = [], None  # the model's system_prompt (--system) goes first in chat_prompt
        print(HELP, file=sys.stderr)
        while True:
            line = _read_line()
            if line is None or line in QUIT:
                return 0
            if line == "/reset":
                messages = []
                print("conversation cleared", file=sys.stderr)
            elif line == "/stats":
                print(stats_footer(last_stats) if last_stats else "no reply yet", file=sys.stderr)
            elif line.startswith("/"):
                print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
            elif line:
                try:
                    result = _reply(model, [*messages, {"role": "user", "content": utf8_text("that line", line)}],
                                    args)
                except PyorthrusError as exc:  # this message only: the conversation goes on
                    print(f"pyorthrus chat: error: {error_text(exc)}", file=sys.stderr)
                    continue
                if result is not None:
                    messages += [{"role": "user", "content": line}, {"role": "assistant", "content": result.text}]
                    last_stats = result.stats
