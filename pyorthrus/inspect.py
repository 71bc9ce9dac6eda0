"""`pyorthrus inspect FILE.gguf [ADAPTER.gguf]`: what a GGUF is (model / Orthrus adapter / merged Orthrus model) and
how complete; given a base and an adapter, whether the adapter fits the base, check by check, as
llama_adapter_orthrus_init decides it (numpy and gguf-py only: nothing is loaded into llama.cpp). The reading is
pyorthrus.gguf_meta's; this verb prints it as text or JSON."""
from __future__ import annotations

import json

from .gguf_meta import adapter_fit, fit_error, inspect_gguf


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_report(info: dict) -> str:
    cov = info["diff_coverage"]
    lines = [
        f"file:          {info['path']} ({_human(info['file_size'])})",
        f"architecture:  {info['architecture']}",
        f"type:          {info['type']}",
        f"layers:        {info['block_count']}",
        f"block size:    {info['block_size']}",
        f"mask token:    {info['mask_token_id']}",
    ]
    if info["recurrent_draft"]:
        lines.append(f"draft scheme:  {info['recurrent_draft']} (recurrent layers)")
    lines += [
        f"tensors:       {info['tensor_count']} ("
        + ", ".join(f"{count} {name}" for name, count in info["tensor_types"].items()) + ")",
        f"diff tensors:  {cov['diff_tensors']} in {cov['layers_with_diff']} layers, "
        f"{cov['complete_layers']} complete ({', '.join(cov['expected_per_layer'])} per "
        + ("attention layer; " + ", ".join(cov["expected_per_recurrent_layer"]) + " per recurrent layer)"
           if cov["expected_per_recurrent_layer"] else "layer)"),
    ]
    for layer, names in cov["missing"].items():
        lines.append(f"  layer {layer}: missing {', '.join(names)}")
    if info["recurrent"]:
        rec, state = info["recurrent"], info["recurrent"]["state_bytes_per_sequence"]
        lines.append(f"recurrent:     {rec['recurrent_layers']} of {info['block_count']} layers; their state takes "
                     f"{_human(state)} per sequence, and as much again per rollback snapshot (an Orthrus cycle of "
                     f"block size K needs K: K = 16 adds {_human(16 * state)}; -k bounds it)")
    if info["base"]:
        lines.append("for base:      " + ", ".join(f"{k}={v}" for k, v in info["base"].items()))
    if info["low_precision_diff_tensors"]:
        lines.append("warning:       diff weights below Q8_0 ("
                     + ", ".join(f"{n} {t}" for t, n in info["low_precision_diff_tensors"].items())
                     + "): drafts may be accepted less often; keep them at Q8_0 or better")
    return "\n".join(lines)


def format_fit(fit: dict) -> str:
    lines = [f"base:     {fit['base']}", f"adapter:  {fit['adapter']}", "",
             f"  {'check':<16} {'base':>12} {'adapter':>18}"]
    for e in fit["checks"]:
        lines.append(f"  {e['check']:<16} {e['base']!s:>12} {e['adapter']!s:>18}  {'ok' if e['ok'] else 'MISMATCH'}")
    lines += ["", "the adapter fits this base" if fit["fits"] else fit_error(fit),
              "(an adapter records the base's shape and vocabulary size, not its tokenizer: use it with the base "
              "model it was trained for)"]
    return "\n".join(lines)


def configure(parser) -> None:
    parser.description = ("Describe a GGUF file (model, Orthrus adapter or merged Orthrus model). Given a base model "
                          "and an adapter, say whether the adapter fits the base (architecture, layers, widths, "
                          "heads, vocabulary, mask token): exit status 0 if it does, 1 if not.")
    parser.add_argument("file", metavar="FILE.gguf", help="a model, merged or adapter GGUF")
    parser.add_argument("adapter", metavar="ADAPTER.gguf", nargs="?",
                        help="an Orthrus adapter to check against FILE.gguf as its base")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args) -> int:
    if args.adapter is None:
        info = inspect_gguf(args.file)
        print(json.dumps(info, indent=2) if args.json else format_report(info))
        return 0
    fit = adapter_fit(args.file, args.adapter)
    print(json.dumps(fit, indent=2) if args.json else format_fit(fit))
    return 0 if fit["fits"] else 1
