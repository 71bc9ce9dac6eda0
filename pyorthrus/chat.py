"""`pyorthrus chat`: an interactive chat using the model's chat template. /stats, /reset, /quit."""
from __future__ import annotations

import argparse
import sys

from .generate import add_decoding_arguments, add_model_arguments, open_model, sampling_options, stats_footer

HELP = "commands: /stats (last reply's statistics), /reset (forget the conversation), /quit"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Chat with a model interactively, decoding with Orthrus. " + HELP
    parser.add_argument("-n", "--max-tokens", type=int, default=512, help="tokens per reply at most")
    add_model_arguments(parser)
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with open_model(args) as model:
        messages, last_stats = [], None  # the model's system_prompt (--system) goes first in chat_prompt
        print(HELP, file=sys.stderr)
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                print()
                return 0
            if line in ("/quit", "/exit"):
                return 0
            if line == "/reset":
                messages = []
                continue
            if line == "/stats":
                print(stats_footer(last_stats) if last_stats else "no reply yet", file=sys.stderr)
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            pieces = model.generate(model.chat_prompt(messages), max_tokens=args.max_tokens, stream=True,
                                    **sampling_options(args))
            for piece in pieces:
                print(piece, end="", flush=True)
            print()
            last_stats = pieces.result.stats
            messages.append({"role": "assistant", "content": pieces.result.text})
