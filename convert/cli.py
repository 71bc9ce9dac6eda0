"""`pyorthrus convert`: an Orthrus HF checkpoint -> adapter and/or merged GGUF.

Also runs as a script: `python convert/cli.py CKPT_DIR --adapter-out adapter.gguf`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script from a checkout that was never installed (a bare GPU machine, say): import this directory as
    # the package `convert`, also under the name an install gives it, which `pyorthrus convert` imports.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    import convert as _package

    sys.modules.setdefault("pyorthrus.convert", _package)
    from convert import OUTTYPES, convert_checkpoint
else:
    from . import OUTTYPES, convert_checkpoint


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR",
                        help="Orthrus checkpoint directory (config.json with model_type orthrus, safetensors)")
    parser.add_argument("--adapter-out", metavar="FILE.gguf",
                        help="write an adapter GGUF (diff tensors only) to use beside any GGUF of the base model")
    parser.add_argument("--merged-out", metavar="FILE.gguf", help="write a merged GGUF (base model + diff tensors)")
    parser.add_argument("--base", metavar="BASE.gguf",
                        help="for --merged-out: copy this base GGUF as it is (any quantization) instead of "
                             "converting the checkpoint's base weights with llama.cpp's converter")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default="f32",
                        help="type of the diff matrices (norms stay f32); without --base also the base weights")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--json", action="store_true", help="print a JSON summary; no progress bar")


def run(args: argparse.Namespace) -> int:
    summary = convert_checkpoint(args.ckpt_dir, adapter_out=args.adapter_out, merged_out=args.merged_out,
                                 base=args.base, outtype=args.outtype, force=args.force,
                                 progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for kind in ("adapter", "merged"):
            if summary[kind]:
                print(f"wrote {kind} {summary[kind]} ({summary['diff_tensors']} diff tensors, "
                      f"{summary['layers']} layers, {summary['outtype']})")
    return 0


def main(argv=None) -> int:
    from pyorthrus.cli import main as pyorthrus_main

    return pyorthrus_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
