"""The command-line options every running verb shares: the model group (`add_model_arguments`: -m, -a, -k, -c,
-t, ...), the decoding and sampling group (`add_decoding_arguments`), their checks before anything loads
(`check_arguments`, with the ranges of pyorthrus.options), the model they describe (`open_model`), the context-room
check and the stats footer.

Used by the verbs generate, chat, serve, demo, check and bench; it imports the runtime (pyorthrus.model) only when a
verb opens a model or prints a footer, so the flags are checked before numpy and the model load.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import assets, options
from .errors import PyorthrusError


def block_size_argument(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an integer K nor 'auto'") from None


FUSED_SUFFIX = "f"  # a decode mode "4f": K=4 with fused cycles
TREE_MODE = re.compile(r"(\d+)t(\d+)")  # a decode mode "16t32": K=16 verifying a tree of 32 nodes


def mode_options(mode: int | str) -> dict:
    """generate() arguments of a decode mode (bench --block-sizes, demo -k): an integer K, "auto", "Kf" (K with
    fused cycles) or "KtN" (K with tree verify of N nodes)."""
    if isinstance(mode, str) and mode.endswith(FUSED_SUFFIX):
        return {"block_size": int(mode[:-1]), "fused": True}
    if isinstance(mode, str) and (tree := TREE_MODE.fullmatch(mode)):
        return {"block_size": int(tree.group(1)), "tree": int(tree.group(2))}
    return {"block_size": mode}


# How reports name decode modes, declared once: bench's JSON keys (also those of the committed bench/results/*.json,
# read back by key_options) and demo's shorter labels, both made from the mode as the verbs spell it.
AR_LABEL = "ar"  # plain AR decoding: the AR row of bench reports, demo's block size 1
AUTO_KEY = "orthrus_auto"
_MODE_KEY = re.compile(r"orthrus_k(\d+)(?:(_fused)|_tree(\d+))?")


def mode_key(mode: int | str) -> str:
    """Bench's report key of a decode mode: orthrus_auto, orthrus_kK, orthrus_kK_fused or orthrus_kK_treeN."""
    if mode == "auto":
        return AUTO_KEY
    options = mode_options(mode)
    return f"orthrus_k{options['block_size']}" + ("_fused" if options.get("fused") else "") + \
        (f"_tree{options['tree']}" if options.get("tree") else "")


def key_options(key: str) -> dict | None:
    """The generate() arguments (as mode_options gives them) of a fixed-K mode_key; None for any other key."""
    match = _MODE_KEY.fullmatch(key)
    if match is None:
        return None
    block_size, fused, tree = match.groups()
    return {"block_size": int(block_size), **({"fused": True} if fused else {}),
            **({"tree": int(tree)} if tree else {})}


def mode_label(mode: int | str) -> str:
    """Demo's label of a decode mode: ar (block size 1), auto, or k and the mode as -k spells it (k4, k4f, k16t16)."""
    return AR_LABEL if mode == 1 else mode if mode == "auto" else f"k{mode}"


def comma_items(text: str) -> list[str]:
    """The items of a comma-separated flag value, stripped, blanks left out: how every list flag is split."""
    return [item for item in (part.strip() for part in text.split(",")) if item]


def comma_list(convert=str, choices=None):
    """An argparse `type=` for a comma-separated list: each item (comma_items) converted by `convert` (str, int,
    str.lower, ...) and, with `choices`, one of them; a bad item or an empty list is a usage error of the flag."""
    def parse(text: str) -> list:
        values = []
        for item in comma_items(text):
            try:
                value = convert(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {convert.__name__}") from None
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"unknown {item!r}: choose from {', '.join(map(str, choices))}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names nothing")
        return values

    return parse


def parse_modes(text: str, flag: str, allow_auto: bool = False) -> list[int | str]:
    """A comma-separated list of decode modes (see mode_options); a PyorthrusError naming `flag` otherwise."""
    modes: list[int | str] = []
    for item in comma_items(text):
        if item.isdigit():
            modes.append(int(item))
        elif (item == "auto" and allow_auto) or (item.endswith(FUSED_SUFFIX) and item[:-1].isdigit()) or \
                TREE_MODE.fullmatch(item):
            modes.append(item)
        else:
            raise PyorthrusError(f"{flag} {text!r}: {item!r} is not a decode mode (an integer K, 'Kf' for fused "
                                 "cycles, 'KtN' for a tree of N nodes" + (", or 'auto')" if allow_auto else ")"))
    if not modes:
        raise PyorthrusError(f"{flag} names no block size")
    return modes


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-m", "--model", type=Path, default=None,
                       help="base or merged GGUF (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    group.add_argument("-a", "--adapter", type=Path, default=None, help="Orthrus adapter GGUF for the base model")
    group.add_argument("-k", "--block-size", type=block_size_argument, default=None, metavar="K|auto",
                       help="draft block size K at run time (2 ... trained K; default: trained K), or 'auto': per "
                            "cycle the K, or plain AR steps, that the measured pass costs and acceptance favour")
    group.add_argument("--reprofile", action="store_true",
                       help="with -k auto: measure this machine's pass costs again instead of reusing the profile "
                            "kept for this device, model, build and settings")
    group.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                       help="fused cycles: each verify pass also drafts the next block, and after a full "
                            "acceptance the next cycle needs one pass instead of two (pays where a 2K-token pass "
                            "costs about a K-token one: GPUs). Default: with -k auto, per cycle where the measured "
                            "costs say it pays; with a fixed K, off")
    group.add_argument("--tree", type=int, default=None, metavar="N",
                       help="tree verify: each cycle verifies the N best continuations of the draft in one pass "
                            "of N+1 tokens, not only its argmax chain, and keeps the longest path AR agrees with "
                            "(output unchanged; more tokens per pass, e.g. 16 or 32; not with --fused). Default: "
                            "chains with a fixed -k; with -k auto, trees of 8, 16 and 32 where the measured costs "
                            "say they pay (--tree 0: none, --tree N: N only)")
    group.add_argument("-s", "--system", default=None,
                       help="system message of chat prompts (default: for the embedded model "
                            f"{assets.EMBEDDED_SYSTEM_PROMPT!r}, under which its adapter was trained; for other "
                            "models, or with --system '', none: the chat template's own default applies)")
    group.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size in tokens")
    group.add_argument("-t", "--threads", type=int, default=None,
                       help="CPU threads for steps and passes alike (default: every CPU this process may use)")
    group.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU (-1: all)")
    group.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=True,
                       help="flash attention (default: on, as llama.cpp's auto setting picks it on CPU and GPUs; "
                            "greedy Orthrus equals AR either way)")
    group.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                       help="batch-invariant CPU settings, so greedy Orthrus reproduces AR bit for bit (default: on "
                            "when no layer is offloaded; --no-strict trades that for faster K-quant passes)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("orthrus", "ar"), default="orthrus",
                        help="orthrus (draft/verify) or ar (the same model, one token per step)")
    sampling = parser.add_argument_group(
        "sampling (temperature 0 = greedy; as in llama.cpp, top-k, top-p and min-p filter the raw logits, then "
        "temperature applies)")
    sampling.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_sampling_flags(sampling, temperature=0.0)


def add_sampling_flags(group, *, temperature: float) -> None:
    """--temp, --top-k, --top-p and --min-p, declared once for every verb that samples; `temperature` is the verb's
    default (0: greedy decoding; the sampling check needs a hot one)."""
    group.add_argument("--temp", type=float, default=temperature, help=f"temperature (default {temperature:g})")
    group.add_argument("--top-k", type=int, default=0, help="top-k (0: off)")
    group.add_argument("--top-p", type=float, default=1.0, help="top-p (1: off)")
    group.add_argument("--min-p", type=float, default=0.0, help="min-p (0: off)")


def adapter_path(args: argparse.Namespace) -> Path | None:
    """-a, or for the embedded default model (no -m) its shipped adapter."""
    if args.model is None and args.adapter is None:
        return assets.default_adapter()
    return args.adapter


def system_prompt(args: argparse.Namespace) -> str | None:
    """--system, or for the embedded default model (no -m) the system message its adapter was trained under."""
    if args.system is None and args.model is None:
        return assets.EMBEDDED_SYSTEM_PROMPT
    return args.system or None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values of the flags this verb has (ranges as pyorthrus.options defines them for every surface;
    text that is not UTF-8) before anything loads. OptionError names the option; pyorthrus.cli names its flag."""
    if hasattr(args, "temp"):
        options.check_sampling(args.temp, args.top_k, args.top_p, args.min_p, args.seed)
    if hasattr(args, "max_tokens"):
        options.check_max_tokens(args.max_tokens)
    if hasattr(args, "threads"):
        options.check_threads(args.threads)
    if hasattr(args, "ctx_size"):
        options.check_n_ctx(args.ctx_size)
    if (getattr(args, "tree", None) or 0) < 0:
        raise options.OptionError("tree", args.tree, "must be an integer >= 0 (0: verify the draft's argmax chain)")
    for label, name in (("-p", "prompt"), ("--system", "system")):
        if getattr(args, name, None) is not None:
            options.utf8_text(label, getattr(args, name))
    for stop in getattr(args, "stop", None) or ():
        options.utf8_text("--stop", stop)


def open_model(args: argparse.Namespace):
    """The Orthrus model the flags describe, after check_arguments."""
    check_arguments(args)
    from .model import Orthrus

    adapter = adapter_path(args)
    return Orthrus(args.model or assets.smollm2_gguf(), adapter, block_size=args.block_size,
                   mode=getattr(args, "mode", "orthrus"), n_ctx=args.ctx_size, n_threads=args.threads,
                   n_gpu_layers=args.n_gpu_layers, flash_attn=args.flash_attn,
                   seed=getattr(args, "seed", 0), strict=args.strict, fused=args.fused,
                   tree=args.tree, system_prompt=system_prompt(args), reprofile=args.reprofile)


def check_room(model, n_prompt: int, max_tokens: int, what: str, also: str | None = None) -> None:
    """Refuse a generation that could outgrow the context (the model would too, in its own words) saying which
    flags make room: `what` says what the prompt is ("-p is 7 tokens"), `also` what else helps ("/reset")."""
    cells = model.round_cells()
    need, n_ctx = n_prompt + max_tokens + cells, model.llm.n_ctx()
    if need <= n_ctx:
        return
    fits = n_ctx - n_prompt - cells  # the largest -n that fits
    remedies = [f"-c {need} or more"] + ([f"-n {fits} or less"] if fits >= 1 else []) + ([also] if also else [])
    raise PyorthrusError(f"{what}: with -n {max_tokens} and a decode round of {cells} that needs {need} tokens of "
                         f"context, and the context (-c) holds {n_ctx}: give " + ", or ".join(remedies))


def sampling_options(args: argparse.Namespace) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)


def auto_summary(stats) -> str:
    """What -k auto did: how many tokens it decoded as plain AR steps, and why (the profile's cost note)."""
    if not stats.n_cycles:
        done = f"all {stats.n_generated} tokens as AR steps"
    elif stats.n_ar_steps:
        done = f"{stats.n_ar_steps} of {stats.n_generated} tokens as AR steps"
    else:
        done = "no AR steps"
    return done + (f": {stats.auto_note}" if stats.auto_note else "")


def stats_footer(stats) -> str:
    from .model import AUTO  # here, not at the top: the flags are checked before numpy and the model load

    parts = [f"{stats.n_generated} tokens", f"{stats.tokens_per_second:.1f} tok/s", f"mode {stats.mode}"]
    if stats.mode == "orthrus":
        parts.append(f"K={stats.block_size}" + (f": {auto_summary(stats)}" if stats.block_size == AUTO else ""))
        if stats.n_cycles:  # (none: auto ran AR steps only, or the model ended at once)
            parts.append(f"{stats.tokens_per_cycle:.2f} tokens/cycle over {stats.n_cycles} cycles, draft "
                         f"{stats.t_draft_s * 1e3:.0f} ms + verify {stats.t_verify_s * 1e3:.0f} ms")
        if stats.n_carried:
            parts.append(f"{stats.n_carried} cycles fused into one pass")
        if stats.n_tree_cycles:
            trees = f"tree of {stats.tree}" if stats.tree else f"trees in {stats.n_tree_cycles} of {stats.n_cycles} cycles"
            parts.append(f"{trees}: {stats.n_offchain} cycles took a non-argmax branch"
                         + (f", {stats.n_redecoded} tokens re-laid for strict AR identity "
                            f"({stats.t_redecode_s * 1e3:.0f} ms)" if stats.n_redecoded else ""))
    return "[" + ", ".join(parts) + "]"
