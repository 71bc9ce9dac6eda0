"""`pyorthrus generate`: one prompt, streamed to the terminal, with a one-line stats footer (or --json).

Its model and sampling options are the ones every running verb shares (pyorthrus.cli_options).
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_options import (add_decoding_arguments, add_model_arguments, check_room, open_model, sampling_options,
                          stats_footer)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate a chat model's reply to one prompt (or with --raw a continuation of the text) with "
                          "Orthrus decoding (or plain AR with --mode ar).")
    parser.add_argument("-p", "--prompt", required=True,
                        help="prompt text: a chat model's message (its chat template applies) unless --raw")
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--raw", action="store_true",
                          help="continue -p as plain text, without the chat template (a base model has none)")
    # the chat template was opt-in before it became the default: --chat is still accepted and changes nothing
    template.add_argument("--chat", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_model_arguments(parser)
    add_decoding_arguments(parser)


def has_chat_template(model) -> bool:
    return bool(model.llm.metadata.get("tokenizer.chat_template"))


def run(args: argparse.Namespace) -> int:
    with open_model(args) as model:
        chat = not args.raw and has_chat_template(model)
        prompt = model.tokenize(model.chat_prompt([{"role": "user", "content": args.prompt}]) if chat
                                else args.prompt)
        check_room(model, len(prompt), args.max_tokens,
                   f"-p is {len(prompt)} tokens" + (" in the chat template" if chat else ""))
        pieces = model.generate(prompt, max_tokens=args.max_tokens, stop=args.stop, stream=True,
                                **sampling_options(args))
        for piece in pieces:
            if not args.json:
                print(piece, end="", flush=True)
        result = pieces.result
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "finish_reason": result.finish_reason,
                          "stats": result.stats.as_dict()}, indent=2))
    else:
        print()
        print(stats_footer(result.stats), file=sys.stderr)
        if not result.text and result.finish_reason == "stop" and args.raw:
            print("pyorthrus generate: the model ended its reply at once; --raw continues -p as plain text, so for "
                  "a question to a chat model leave out --raw (its chat template then applies)", file=sys.stderr)
    return 0
