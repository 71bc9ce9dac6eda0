"""Greedy fidelity matrix of llama_orthrus_cycle: Orthrus output vs one-token-at-a-time greedy AR in the same
build, SmolLM2-135M-Instruct + an adapter, over quantizations x flash-attn x block sizes.

    python bench/fidelity.py                       # full matrix: 50 GSM8K prompts x 128 tokens, K 4/8/16/32,
                                                   # F32/F16/Q8_0/Q4_1/Q4_K_M, flash-attn off/on (hours on 2 cores)
    python bench/fidelity.py --prompts 4 --tokens 32 --quants Q4_1 --ks 4,16   # a quick slice
    python bench/fidelity.py ... --json out.json --resume    # continue a run that was cut off
    python bench/fidelity.py --json out.json --report-only   # summary of what out.json holds so far

--config strict (default): batch-invariant CPU configuration: GGML_CPU_TILED_MM=0 in the environment before
ggml loads, use_extra_bufts=False; the library should be built with -DGGML_LLAMAFILE=OFF (flavour strict).
--config fast: neither knob (build flavour as installed); divergences are expected there and are reported with
the AR logit margin (top-1 minus top-2) at the first divergent position, and the AR logit gap between the AR
token and the token Orthrus committed there. On a GPU build, -ngl -1 offloads every layer; use --config fast there
(GPU kernels are not batch-invariant, so a verify pass and one-token AR steps may round differently).

--adapter PATH: a trained adapter (e.g. pyorthrus/data/smollm2-135m-orthrus-k16.q8_0.gguf) for every K up to its
trained block size; larger K use the identity adapter. Default: the identity adapter for every K. Each result
records which adapter it ran with. The trained adapter's K values run first, for every prompt, then the identity
adapter's (far slower: few drafts accepted), so a run cut off early has the shipped configuration complete.

With --json the results are rewritten after every (quant, prompt) unit, so a run that is cut off keeps what it
finished; --resume skips the runs the file already holds. --shard I/N runs only the prompts p with p % N == I, so
N processes (one core each, each with its own --json) share a matrix; --merge A.json B.json ... --json OUT.json
joins their results. Each result records the key of the llama.cpp build it ran on. The summary (printed, and
written next to the JSON as .txt) states exactly how many prompts x tokens x configurations it covers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from pyorthrus.testing import process

TOP_N = 8  # AR candidates kept per position: enough to price the token Orthrus chose where it parted from AR


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= I < N")
    return i, n


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ks", default="4,8,16,32")
    ap.add_argument("--quants", default="F32,F16,Q8_0,Q4_1,Q4_K_M")
    ap.add_argument("--fa", default="off,on")
    ap.add_argument("--config", choices=["strict", "fast"], default="strict")
    ap.add_argument("--adapter", default=None, help="trained adapter for K <= its block size (default: identity)")
    ap.add_argument("--fused", action="store_true", help="fused cycles (patch 0009): each verify pass drafts the next "
                    "block; the results record how many cycles carried their draft over")
    ap.add_argument("--tree", type=int, default=0, metavar="N",
                    help="tree verify (patch 0019): every cycle verifies a tree of N draft nodes (off-chain paths "
                         "re-laid, as strict pyorthrus runs them); the results record how many cycles left the chain")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                    help="layers offloaded to the GPU (-1: all) on a GPU build; use with --config fast")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "pyorthrus" / "fidelity"))
    ap.add_argument("--json", default=None, help="write the full results here (after every prompt)")
    ap.add_argument("--resume", action="store_true", help="keep the results already in --json and skip them")
    ap.add_argument("--report-only", action="store_true", help="run nothing: summarise --json")
    ap.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                    help="run only the prompts p with p %% N == I (0 <= I < N)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="run nothing: join these result files (same settings) into --json")
    return ap.parse_args()


args = _parse()
process.configure(strict=args.config == "strict")  # before llama_cpp is imported

import numpy as np  # noqa: E402

from pyorthrus.testing.harness import Context, Model, init_backend, orthrus_generate  # noqa: E402
from pyorthrus.testing.adapters import write_identity_adapter  # noqa: E402
from pyorthrus import _lib as O  # noqa: E402
from pyorthrus.build import installed_build_info  # noqa: E402
from pyorthrus.files import atomic_write  # noqa: E402
from pyorthrus.prompts import load as load_prompts  # noqa: E402
from pyorthrus.stats import tokens_per_cycle  # noqa: E402
from smollm2_quants import model_file  # noqa: E402

# settings a resumed run must share with the file it continues (prompt count, Ks, quants and fa may grow),
# with their values for files written before the setting existed
RESUME_SETTINGS = {"tokens": None, "config": None, "adapter": None, "n_gpu_layers": 0, "tree": 0}


def prompts(n: int) -> list[str]:
    texts = [p["prompt"] for p in load_prompts("gsm8k", n)]
    if len(texts) < n:
        raise SystemExit(f"need {n} prompts, the GSM8K benchmark split has {len(texts)}")
    return texts


def greedy_ar_with_top(ctx: Context, prompt, n_tokens):
    """Greedy AR tokens and, per position, the AR logits' top TOP_N (ids, values), best first."""
    last = ctx.prefill(prompt)
    pos = len(prompt) - 1
    out, tops = [], []
    while len(out) < n_tokens:
        assert ctx.decode([last], pos) == 0
        lg = ctx.logits(-1)
        ids = np.argpartition(lg, -TOP_N)[-TOP_N:]
        ids = ids[np.lexsort((ids, -lg[ids]))]  # descending logit, lower id first on ties (as argmax)
        last = int(ids[0])
        out.append(last)
        tops.append((ids.tolist(), lg[ids].tolist()))
        pos += 1
        if ctx.model.is_eog(last):
            break
    return out, tops


def divergence(ref, tops, tokens) -> dict:
    """First position where Orthrus parted from AR, with the AR logit margin (top-1 minus top-2) there and the
    AR logit gap from the AR token to the token Orthrus committed (None when it is not in AR's top TOP_N)."""
    div = next((i for i, (a, b) in enumerate(zip(ref, tokens)) if a != b), None)
    if div is None and len(ref) != len(tokens):
        div = min(len(ref), len(tokens))
    if div is None:
        return dict(identical=True, first_divergence=None)
    row = dict(identical=False, first_divergence=div, ar_token=ref[div] if div < len(ref) else None,
               orthrus_token=tokens[div] if div < len(tokens) else None)
    if div < len(tops):
        ids, vals = tops[div]
        row["ar_margin_at_divergence"] = vals[0] - vals[1]
        other = row["orthrus_token"]
        row["ar_gap_to_orthrus_token"] = vals[0] - vals[ids.index(other)] if other in ids else None
    return row


def run_key(r: dict) -> tuple:
    return (r["quant"], r["fa"], r["K"], r["prompt"])


def read_results(path: Path, settings: dict) -> tuple[dict, list[dict]]:
    """The settings and results of a file run with the same RESUME_SETTINGS; rows from before builds were recorded
    per row get the file's build key."""
    old = json.loads(path.read_text())
    for key, default in RESUME_SETTINGS.items():
        theirs, ours = old["config"].get(key, default), settings[key]
        if key == "adapter" and theirs and ours:  # the same file in another checkout resumes too
            theirs, ours = Path(theirs).name, Path(ours).name
        if theirs != ours:
            raise SystemExit(f"{path}: it was run with {key}={old['config'].get(key, default)!r}, "
                             f"not {settings[key]!r}")
    for row in old["results"]:
        row.setdefault("build_key", (old.get("build") or {}).get("key"))
    return old["config"], old["results"]


def load_previous(path: Path, settings: dict) -> list[dict]:
    if not path.exists():
        return []
    if not args.resume:
        raise SystemExit(f"{path} exists: pass --resume to continue it, or remove it")
    return read_results(path, settings)[1]


def merge(paths: list[Path]) -> tuple[dict, dict, list[dict]]:
    """Settings, build and results of several shards of one matrix (the first file's settings and build)."""
    first = json.loads(paths[0].read_text())
    settings = first["config"]
    rows = {}
    for path in paths:
        config, results = read_results(path, settings)
        settings["prompts"] = max(settings["prompts"], config["prompts"])
        for row in results:
            rows.setdefault(run_key(row), row)
    return settings, first.get("build"), list(rows.values())


def save(path: Path, settings: dict, build: dict, results: list[dict]) -> None:
    """Rewrite the JSON and its .txt summary atomically, so an interrupted run never leaves a truncated file."""
    for target, text in ((path, json.dumps(dict(config=settings, build=build, results=results), indent=1)),
                         (path.with_suffix(".txt"), summary(settings, build, results))):
        atomic_write(target, lambda tmp, text=text: tmp.write_text(text))


def load_adapters(model: Model, path: Path, quant: str, ks: list[int], work: Path) -> dict[int, tuple]:
    """K -> (adapter handle, adapter name): the trained adapter where it covers K, else the identity adapter."""
    per_k, trained_k = {}, 0
    if args.adapter:
        ad = model.load_adapter(args.adapter)
        if not ad:
            raise SystemExit(O.last_error())
        trained_k = O.llama_adapter_orthrus_block_size(ad)
        per_k.update({K: (ad, Path(args.adapter).name) for K in ks if K <= trained_k})
    missing = [K for K in ks if K not in per_k]
    if missing:
        identity_path = work / f"identity.{quant}.K{max(missing)}.gguf"
        if not identity_path.is_file():
            atomic_write(identity_path, lambda tmp: write_identity_adapter(path, tmp, block_size=max(missing)))
        ad = model.load_adapter(identity_path)
        if not ad:
            raise SystemExit(O.last_error())
        per_k.update({K: (ad, f"identity-K{max(missing)}") for K in missing})
    return per_k


def run_matrix(settings: dict, build: dict, results: list[dict]) -> None:
    init_backend()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    fas = args.fa.split(",")
    texts = prompts(args.prompts)
    shard, n_shards = args.shard
    mine = [pi for pi in range(len(texts)) if pi % n_shards == shard]
    done = {run_key(r) for r in results}
    t_start = time.time()
    for quant in args.quants.split(","):
        if all((quant, fa, K, pi) in done for K in ks for fa in fas for pi in mine):
            continue
        path = model_file(quant, work, args.threads)
        model = Model(path, use_extra_bufts=(args.config == "fast"), n_gpu_layers=args.n_gpu_layers)
        adapters = load_adapters(model, path, quant, ks, work)
        # One phase per adapter, the trained one first: its Ks (the shipped configuration) are covered for every
        # prompt before the identity adapter's (slow: few drafts accepted) start. Within a phase prompts are
        # outermost and both flash-attn settings alternate, so a run cut off early still covers both alike.
        names = list(dict.fromkeys(name for _, name in sorted(adapters.values(), key=lambda a: "identity" in a[1])))
        phases = [[K for K in ks if adapters[K][1] == name] for name in names]
        contexts = {fa: Context(model, n_ctx=max(512, args.tokens + 400), n_batch=max(64, 2 * max(ks), args.tree + 1),
                                flash_attn=(fa == "on"), n_threads=args.threads) for fa in fas}
        for phase_ks in phases:
            todo = [(pi, fa) for pi in mine for fa in fas
                    if any((quant, fa, K, pi) not in done for K in phase_ks)]
            for pi, fa in todo:
                ctx = contexts[fa]
                prompt = model.chat_prompt(texts[pi])
                t0 = time.time()
                ref, tops = greedy_ar_with_top(ctx, prompt, args.tokens)
                t_ar = time.time() - t0
                for K in phase_ks:
                    if (quant, fa, K, pi) in done:
                        continue
                    ad, ad_name = adapters[K]
                    O.llama_set_adapter_orthrus(ctx.ptr, ad)
                    t0 = time.time()
                    run = orthrus_generate(ctx, prompt, args.tokens, block_size=K, fused=args.fused, tree=args.tree)
                    t_or = time.time() - t0
                    row = dict(quant=quant, fa=fa, K=K, prompt=pi, adapter=ad_name, n_tokens=len(ref),
                               **divergence(ref, tops, run.tokens),
                               cycles=run.cycles, accepted=run.accepted, drafted=run.drafted,
                               tokens_per_cycle=tokens_per_cycle(len(run.tokens), 0, run.cycles), carried=run.carried,
                               offchain=run.offchain,
                               t_ar_s=t_ar,
                               t_orthrus_s=t_or, build_key=build.get("key"))
                    results.append(row)
                    if not row["identical"]:
                        print(f"DIVERGENCE {quant} fa={fa} K={K} prompt={pi} at token {row['first_divergence']}: "
                              f"AR margin {row.get('ar_margin_at_divergence')}, AR gap to the Orthrus token "
                              f"{row.get('ar_gap_to_orthrus_token')}", flush=True)
                O.llama_set_adapter_orthrus(ctx.ptr, None)
                if args.json:
                    save(Path(args.json), settings, build, results)
                print(f"[{time.time() - t_start:7.0f}s] {quant} fa={fa} K={','.join(map(str, phase_ks))} "
                      f"prompt {pi + 1}/{len(texts)} ({len(ref)} tokens)", flush=True)
        for ctx in contexts.values():
            ctx.close()
        for ad in {ad for ad, _ in adapters.values()}:
            O.llama_adapter_orthrus_free(ad)
        model.close()


def summary(settings: dict, build: dict, results: list[dict]) -> str:
    quants = settings["quants"].split(",")
    fas, ks = settings["fa"].split(","), [int(k) for k in settings["ks"].split(",")]
    requested = len(quants) * len(fas) * len(ks)
    prompts_done = sorted({r["prompt"] for r in results})
    configs_done = sorted({(r["quant"], r["fa"], r["K"]) for r in results},
                          key=lambda c: (quants.index(c[0]) if c[0] in quants else len(quants), c[1], c[2]))
    n_tokens = sum(r["n_tokens"] for r in results)
    configs_of = {}
    for r in results:
        configs_of.setdefault(r["prompt"], set()).add((r["quant"], r["fa"], r["K"]))
    complete = sum(len(c) == requested for c in configs_of.values())
    width = max([7] + [len(r.get("adapter", "identity")) for r in results])
    lines = [f"config={settings['config']} (build {(build or {}).get('backend')}, flavour "
             f"{(build or {}).get('flavour')}) threads={settings['threads']} "
             f"n_gpu_layers={settings.get('n_gpu_layers', 0)} adapter={settings.get('adapter') or 'identity'}"
             + (" fused cycles" if settings.get("fused") else "")
             + (f" tree verify of {settings['tree']} nodes" if settings.get("tree") else ""),
             f"requested: {settings['prompts']} prompts x {settings['tokens']} tokens x {requested} configurations "
             f"({len(quants)} quants x {len(fas)} fa x {len(ks)} K) = {settings['prompts'] * requested} runs",
             f"covered:   {len(results)} runs = {len(configs_done)} configurations, {len(prompts_done)} distinct "
             f"prompts, {n_tokens} greedy tokens compared (a run stops at EOG or {settings['tokens']} tokens)"
             + ("" if len(results) == settings["prompts"] * requested else "  [PARTIAL]"),
             f"complete:  {complete} of {settings['prompts']} prompts have all {requested} configurations",
             "builds:    " + ", ".join(f"{key} ({n} runs)" for key, n in sorted(Counter(
                 r.get("build_key") or "unrecorded" for r in results).items())), "",
             f"{'quant':7} {'fa':3} {'K':>3} {'adapter':>{width}} {'identical':>10} {'tokens':>7} {'tok/cycle':>9} "
             f"{'acc/cycle':>9} {'carried':>7} {'offchain':>8} {'AR s':>7} {'Orth s':>7}"]
    for q, fa, K in configs_done:
        rs = [r for r in results if (r["quant"], r["fa"], r["K"]) == (q, fa, K)]
        cycles = max(1, sum(r["cycles"] for r in rs))
        adapter = ",".join(sorted({r.get("adapter", "identity") for r in rs}))
        lines.append(f"{q:7} {fa:3} {K:>3} {adapter:>{width}} {sum(r['identical'] for r in rs):>4}/{len(rs):<5} "
                     f"{sum(r['n_tokens'] for r in rs):7} {sum(r['n_tokens'] for r in rs) / cycles:9.2f} "
                     f"{sum(r['accepted'] for r in rs) / cycles:9.2f} {sum(r.get('carried', 0) for r in rs):7} "
                     f"{sum(r.get('offchain', 0) for r in rs):8} "
                     f"{sum(r['t_ar_s'] for r in rs):7.1f} "
                     f"{sum(r['t_orthrus_s'] for r in rs):7.1f}")
    bad = [r for r in results if not r["identical"]]
    lines += ["", f"{len(results) - len(bad)}/{len(results)} runs token-identical to greedy AR"]
    if bad:
        lines += ["", "divergences (first divergent position; AR margin = top-1 minus top-2 AR logit there; "
                      "gap = AR logit of the AR token minus that of the Orthrus token):"]
        for r in sorted(bad, key=lambda r: (r["quant"], r["fa"], r["K"], r["prompt"])):
            gap = r.get("ar_gap_to_orthrus_token")
            lines.append(f"  {r['quant']:7} fa={r['fa']:3} K={r['K']:<3} prompt {r['prompt']:<3} token "
                         f"{r['first_divergence']:<4} AR {r.get('ar_token')} vs Orthrus {r.get('orthrus_token')}  "
                         f"margin {r.get('ar_margin_at_divergence', float('nan')):.4f}  gap "
                         + (f"{gap:.4f}" if gap is not None else f"> top-{TOP_N}"))
    return "\n".join(lines) + "\n"


def main() -> int:
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "report_only", "shard", "merge")}
    if args.adapter:
        settings["adapter"] = str(Path(args.adapter).resolve())
    json_path = Path(args.json) if args.json else None
    if (args.report_only or args.merge) and json_path is None:
        raise SystemExit("--report-only and --merge need --json")
    if args.report_only:
        saved = json.loads(json_path.read_text())
        settings, build, results = saved["config"], saved.get("build"), saved["results"]
    elif args.merge:
        settings, build, results = merge(args.merge)
    else:
        build = installed_build_info()["build"] or {}
        if args.config == "strict" and build.get("flavour") != "strict":
            print(f"warning: --config strict on a {build.get('flavour')!r} build: divergences are expected",
                  file=sys.stderr)
        if args.config == "strict" and args.n_gpu_layers != 0:
            print("warning: --config strict with offloaded layers: GPU kernels are not batch-invariant, "
                  "divergences are expected (use --config fast)", file=sys.stderr)
        results = load_previous(json_path, settings) if json_path else []
        run_matrix(settings, build, results)
    if json_path and args.report_only:
        json_path.with_suffix(".txt").write_text(summary(settings, build, results))
    elif json_path:
        save(json_path, settings, build, results)
    print("\n" + summary(settings, build, results), end="")
    n_bad = sum(not r["identical"] for r in results)
    return 0 if n_bad == 0 or settings["config"] == "fast" else 1


if __name__ == "__main__":
    sys.exit(main())
