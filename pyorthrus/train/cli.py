"""`pyorthrus train`: train the Orthrus diffusion attention weights of a frozen base (forward-KL self-distillation).

Writes a diff-only Orthrus checkpoint (upstream HF layout) that `pyorthrus convert CKPT --adapter-out A.gguf`
turns into an adapter GGUF. Also runs as `python -m pyorthrus.train.cli ...`.
"""
from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from .config import add_config_flags

    add_config_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary; no progress bar")


def run(args: argparse.Namespace) -> int:
    from .config import config_from_args
    from .loop import train

    summary = train(config_from_args(args, progress=not args.json), resume=args.resume)
    if args.json:
        summary = {k: v for k, v in summary.items() if k != "history"}
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['stopped']}: {summary['steps']}/{summary['total_steps']} steps, {summary['tokens']} tokens, "
              f"{summary['wall_s']:.0f} s; loss {summary['loss']:.4f}, accepted drafts/block "
              f"{summary['accepted']:.2f}; checkpoint {summary['out']}")
    return 0


def main(argv=None) -> int:
    from ..cli import main as pyorthrus_main

    return pyorthrus_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
