"""Fuzz what Orthrus users download from strangers (issue 18): adapter GGUFs, merged GGUFs, safetensors checkpoints.

Valid seed files are made first (a tiny upstream-format Qwen3 checkpoint with the real tokenizer, its plain base
GGUF from llama.cpp's converter, the adapter and merged GGUFs from `pyorthrus convert`). Each mutant is then made
from a seed by one to three mutations and fed to a worker process:

  adapter     llama_adapter_orthrus_init on the loaded base, then one decode cycle with it attached
  merged      llama_model_load_from_file, then one decode cycle when it has diff weights
  checkpoint  `pyorthrus convert CKPT --adapter-out FILE` (in the worker), which must write nothing when it fails
  hparams     not random: every scalar number in the merged file's metadata (block count, head counts, epsilons,
              rope base, ...) set in turn to each edge value (0, 1, -1, extremes, NaN, +-inf), then as merged

GGUF mutations work on the file's own structure (every header count, key/value length, type and value, every
tensor's name, dimensions, type and offset, read from gguf-py's reader): interesting integers (0, 1, -1, extremes,
off by one, huge), random bytes, truncation, appended garbage. Checkpoint mutations rewrite the safetensors header
(length, JSON, dtypes, shapes, offsets, names), truncate the file, or change config.json values.

Each outcome is counted: clean_error (refused with a message), loaded (accepted and decoded), crash (the worker
died, an uncaught Python exception, or a failed convert that left a file behind), sanitizer (an ASan/UBSan report
on the worker's stderr) and hang (no answer within --timeout). Any crash, sanitizer report or hang saves the
mutant under OUT-inputs/ with what happened, and the run exits 1. A mutant is reproducible from (--seed, target,
index): its random generator is seeded with exactly that.

    python bench/fuzz.py --out bench/results/fuzz_cpu                     # 10k adapter, 2k merged, 2k checkpoint
    python bench/fuzz.py --iterations 15 --minutes 4 --out /tmp/fuzz      # a quick slice (tests/test_fuzz.py)
    python bench/fuzz.py --sanitize --out bench/results/fuzz_asan          # the same under ASan + UBSan
    python bench/fuzz.py --sanitize --shard 1/2 --out /tmp/fuzz_1          # half of it (run 0/2 beside it)
    python bench/fuzz.py --merge /tmp/fuzz_0.json /tmp/fuzz_1.json --out bench/results/fuzz_asan  # one report
"""
from __future__ import annotations

import argparse
import contextlib
import re
import io
import json
import logging
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pyorthrus.cli_options import comma_list
from pyorthrus.gguf_meta import open_reader
from pyorthrus.testing.gguf_edits import offset_in_file

# default mutants per target; None: the hparams sweep runs every (key, edge value) pair
TARGETS = {"adapter": 10_000, "merged": 2_000, "checkpoint": 2_000, "hparams": None}
OUTCOMES = ("clean_error", "loaded", "crash", "sanitizer", "hang")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")
PROMPT = [9707, 11, 1879, 0, 358, 1079]  # a few ordinary Qwen3 token ids


# -- seed files ------------------------------------------------------------------------------------------------------
def make_seeds(work: Path) -> dict[str, Path]:
    from pyorthrus import cli
    from pyorthrus.testing import fixtures
    from pyorthrus.convert.checkpoint import OrthrusCheckpoint
    from pyorthrus.convert.hf_base import convert_base_to_gguf

    ckpt = fixtures.write_tiny_orthrus_qwen3(work / "checkpoint", seed=5, num_layers=2, block_size=4)
    base = convert_base_to_gguf(OrthrusCheckpoint(ckpt), "q8_0", work)
    adapter, merged = work / "adapter.gguf", work / "merged.gguf"
    for args in (["--adapter-out", str(adapter)], ["--merged-out", str(merged), "--base", str(base)]):
        with contextlib.redirect_stdout(io.StringIO()):
            if cli.main(["convert", str(ckpt), *args, "--outtype", "q8_0", "--json"]) != 0:
                raise SystemExit(f"fuzz: could not make the seed files in {work}")
    return {"base": base, "adapter": adapter, "merged": merged, "checkpoint": ckpt}


# -- GGUF mutations --------------------------------------------------------------------------------------------------
def gguf_fields(path: Path) -> list[list[tuple[int, np.dtype, int]]]:
    """Per field (header counts, each key/value, each tensor's info), the (offset, dtype, count) of every scalar or
    array the reader decoded in it: key lengths and names, value types and values, tensor names, n_dims, dims,
    types and offsets. Mutations pick a field first, so the 151k strings of the token list are one field of many."""
    reader = open_reader(path)
    fields = list(reader.fields.values()) + [t.field for t in reader.tensors]
    return [[(offset_in_file(reader, p), p.dtype, p.size) for p in f.parts if p.size] for f in fields]


def interesting(value: int, bits: int, rng: random.Random) -> int:
    top = (1 << bits) - 1
    choices = [0, 1, 2, top, top >> 1, (top >> 1) + 1, value + 1, value - 1, value * 2, value << 16,
               rng.randrange(top + 1), 1 << rng.randrange(bits)]
    return rng.choice(choices) & top


def mutate_gguf(data: bytearray, fields, rng: random.Random) -> str:
    header_end = max(off + np.dtype(dt).itemsize * n for parts in fields for off, dt, n in parts)
    fields = [[(off, dt, n) for off, dt, n in parts if off + np.dtype(dt).itemsize * n <= len(data)]
              for parts in fields]  # what a truncation before this mutation left
    fields = [parts for parts in fields if parts]
    kind = rng.choice(["field", "field", "field", "bytes", "truncate", "append"]) if fields else "append"
    if kind == "field":
        off, dt, n = rng.choice(rng.choice(fields))
        dt = np.dtype(dt)
        if dt.kind in "iu" and dt.itemsize in (1, 2, 4, 8):
            at = off + dt.itemsize * rng.randrange(n)
            fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[dt.itemsize]
            value = interesting(struct.unpack_from(fmt, data, at)[0], dt.itemsize * 8, rng)
            struct.pack_into(fmt, data, at, value)
            return f"field@{at}={value}"
        at = off + rng.randrange(max(1, n * dt.itemsize))
        data[at] = rng.randrange(256)
        return f"byte@{at}"
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(min(len(data), header_end + 64))] = rng.randrange(256)
        return "bytes"
    if kind == "truncate":
        cut = rng.randrange(header_end) if rng.random() < 0.7 else rng.randrange(len(data))
        del data[cut:]
        return f"truncate@{cut}"
    data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return "append"


def hparam_edits(path: Path) -> list[tuple[str, int, bytes]]:
    """(what, offset, new bytes) for every scalar number of path's metadata set to each edge value of its type."""
    import gguf

    reader = open_reader(path)
    edits = []
    for field in reader.fields.values():
        if len(field.types) != 1 or field.types[0] in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.BOOL):
            continue
        value = field.parts[field.data[0]]
        dt = value.dtype
        if dt.kind == "f":
            edges = [0.0, -1.0, -1e-6, 1e30, np.nan, np.inf, -np.inf]
        else:
            info = np.iinfo(dt)
            edges = sorted({0, 1, info.max, info.min, info.max >> 1, min(int(value[0]) * 1024, info.max)})
        offset = offset_in_file(reader, value)
        edits += [(f"{field.name}={edge}", offset, np.array([edge], dt).tobytes()) for edge in edges]
    return edits


# -- checkpoint mutations --------------------------------------------------------------------------------------------
def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = struct.unpack_from("<Q", data)[0]
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["dtype", "shape", "offsets", "drop", "rename", "json", "length", "truncate"])
    if kind == "dtype":
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "I8", "U8", "F64", "I64", "BOOL", "F8_E4M3", "X", 7])
    elif kind == "shape":
        shape = list(entry["shape"])
        op = rng.choice(["drop", "add", "huge", "negative", "zero", "string", "swap"])
        if op == "drop" and shape:
            shape.pop()
        elif op == "add":
            shape.append(rng.choice([1, 2, 3]))
        elif op == "swap":
            shape.reverse()
        elif shape:
            shape[rng.randrange(len(shape))] = {"huge": 1 << 40, "negative": -4, "zero": 0, "string": "8"}.get(op, 1)
        entry["shape"] = shape
    elif kind == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [a, len(body) + 1024], [-8, b], [a], [a, 1 << 62],
                                            [a + 2, b], "0"])
    elif kind == "drop":
        del header[name]
    elif kind == "rename":
        header[name.replace("diff", "dif") if "diff" in name else name + ".x"] = header.pop(name)
    text = json.dumps(header).encode()
    if kind == "json":
        cut = rng.randrange(len(text))
        text = text[:cut] + bytes([rng.randrange(256)]) + text[cut + 1:]
    out = struct.pack("<Q", len(text)) + text + body
    if kind == "length":
        out = struct.pack("<Q", rng.choice([0, 1, len(text) + 1, len(text) - 1, len(out), 1 << 62])) + out[8:]
    if kind == "truncate":
        out = out[:rng.randrange(len(out))]
    return out, f"{kind}:{name}"


def mutate_config(config: dict, rng: random.Random) -> str:
    key = rng.choice(["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "head_dim", "block_size", "mask_token_id", "vocab_size", "model_type"])
    config[key] = rng.choice([0, -1, 1, 3, 1 << 31, 1 << 62, "x", None, 2.5])
    return f"config:{key}={config[key]}"


def make_checkpoint_mutant(seed_dir: Path, out_dir: Path, rng: random.Random) -> str:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for f in seed_dir.iterdir():  # everything unchanged is a link to the seed (the tokenizer alone is 11 MB)
        if f.suffix not in (".safetensors", ".json") or f.name.startswith("tokenizer"):
            (out_dir / f.name).symlink_to(f)
    config = json.loads((seed_dir / "config.json").read_text())
    tensors = {f.name: f.read_bytes() for f in seed_dir.glob("*.safetensors")}
    what, untouched = [], sorted(tensors)  # a file is mutated once: its header may no longer parse afterwards
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.2 or not untouched:
            what.append(mutate_config(config, rng))
        else:
            name = untouched.pop(rng.randrange(len(untouched)))
            tensors[name], how = mutate_safetensors(tensors[name], rng)
            what.append(how)
    (out_dir / "config.json").write_text(json.dumps(config))
    for name, data in tensors.items():
        (out_dir / name).write_bytes(data)
    return ", ".join(what)


# -- the worker: everything that may crash runs here -----------------------------------------------------------------
def worker(base_path: str) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import ctypes

    import llama_cpp.llama_cpp as L

    from pyorthrus import _lib as O
    from pyorthrus import cli
    from pyorthrus.model import load_errors_kept

    replies = os.fdopen(os.dup(1), "w")  # answers on the real stdout; anything else printed goes to stderr
    os.dup2(2, 1)
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)
    load_errors: list[str] = []  # what llama.cpp logged as errors while loading the current merged mutant
    L.llama_backend_init()
    base = L.llama_model_load_from_file(base_path.encode(), L.llama_model_default_params())

    def context(model):
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 64, 32, 32, 1, 1
        return L.llama_init_from_model(model, params)

    def cycle(ctx) -> tuple[str, str]:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        head = (L.llama_token * len(PROMPT))(*PROMPT)
        if L.llama_decode(ctx, L.llama_batch_get_one(head, len(PROMPT) - 1)) != 0:
            return "clean_error", "prompt decode failed"
        params = O.llama_orthrus_default_params()
        params.block_size = 2
        out, stats = (O.llama_token * 4)(), O.llama_orthrus_stats()
        n = O.llama_orthrus_cycle(ctx, 0, PROMPT[-1], ctypes.byref(params), out, 4, ctypes.byref(stats))
        return ("loaded", f"{n} tokens") if n > 0 else ("clean_error", f"cycle: {O.last_error()}")

    base_ctx = context(base)

    def try_adapter(path: str) -> tuple[str, str]:
        adapter = O.llama_adapter_orthrus_init(base, path.encode())
        if not adapter:
            return "clean_error", O.last_error()
        try:
            O.llama_set_adapter_orthrus(base_ctx, adapter)
            return cycle(base_ctx)
        finally:
            O.llama_adapter_orthrus_free(adapter)

    def try_merged(path: str) -> tuple[str, str]:
        load_errors.clear()
        model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        if not model:
            return "clean_error", load_errors[0] if load_errors else "llama.cpp refused the model"
        try:
            if not O.llama_model_has_orthrus(model):
                return "loaded", "no diff weights"
            ctx = context(model)
            if not ctx:
                return "clean_error", "no context"
            try:
                return cycle(ctx)
            finally:
                L.llama_free(ctx)
        finally:
            L.llama_model_free(model)

    def try_checkpoint(path: str) -> tuple[str, str]:
        out = Path(path).parent / "converted.gguf"
        out.unlink(missing_ok=True)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = cli.main(["convert", path, "--adapter-out", str(out), "--outtype", "q8_0", "--json"])
        if rc == 0:
            return try_adapter(str(out))
        left = [p.name for p in Path(path).parent.iterdir() if "converted" in p.name]  # the output or its .tmp
        if left:
            return "crash", f"convert failed but left {left} behind"
        return "clean_error", (err.getvalue().strip().splitlines() or ["(no message)"])[-1]

    handlers = {"adapter": try_adapter, "merged": try_merged, "hparams": try_merged, "checkpoint": try_checkpoint}
    with load_errors_kept(load_errors):
        for line in sys.stdin:
            target, path = line.rstrip("\n").split(" ", 1)
            try:
                outcome, message = handlers[target](path)
            except Exception as exc:  # noqa: BLE001 - an uncaught exception on bad input is a finding, not a stop
                outcome, message = "crash", f"uncaught {type(exc).__name__}: {exc}"
            replies.write(json.dumps({"outcome": outcome, "message": message[:400]}) + "\n")
            replies.flush()
    return 0


def _why(report: str) -> str:
    """The lines of a dying process's stderr that say why (an assertion, an exception), not its backtrace."""
    lines = [line for line in report.splitlines()
             if re.search(r"GGML_ASSERT|GGML_ABORT|terminate called|what\(\)|Sanitizer|runtime error|Error", line)]
    return " | ".join(lines)[-600:] or report[-300:]


def _sanitizer_report(stderr: str) -> str:
    """The sanitizer's report in a worker's stderr, from its first line (what and where), or "" if none."""
    starts = [i for i in (stderr.find(marker) for marker in SANITIZER_MARKERS) if i >= 0]
    if not starts:
        return ""
    begin = stderr.rfind("\n", 0, min(starts)) + 1
    return stderr[begin:begin + 3000]


class Worker:
    """One worker process at a time; restarted after a crash or a hang."""

    def __init__(self, base: Path, log: Path, env: dict[str, str] | None = None):
        self.base, self.log, self.env, self.proc = base, log, {**os.environ, **(env or {})}, None

    def start(self) -> None:
        self.stderr = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(self.base)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=self.env)

    def ask(self, target: str, path: Path, timeout: float) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        seen = self.log.stat().st_size
        self.proc.stdin.write(f"{target} {path}\n".encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return "hang", f"no answer within {timeout:.0f} s"
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            self.stderr.close()
            report = self._stderr_since(seen)
            found = _sanitizer_report(report)
            if found:  # ASan stops the process at its first report
                return "sanitizer", found
            return "crash", f"worker died (exit {code}): {_why(report)}"
        reply = json.loads(line)
        report = _sanitizer_report(self._stderr_since(seen))
        if report:
            self.stop()
            return "sanitizer", report
        return reply["outcome"], reply["message"]

    def _stderr_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.stderr.close()


# -- the run ---------------------------------------------------------------------------------------------------------
def fuzz_target(target: str, seeds: dict, iterations: int, deadline: float, args, work: Path, worker_: Worker,
                saved: Path) -> dict:
    counts = dict.fromkeys(OUTCOMES, 0)
    refusals = Counter()  # the clean errors' messages, file paths and numbers blanked: which checks fired
    findings = []
    seed_file = seeds["merged" if target == "hparams" else target]
    if target != "checkpoint":
        seed_bytes = seed_file.read_bytes()
        fields = gguf_fields(seed_file)
    edits = hparam_edits(seed_file) if target == "hparams" else []
    if target == "hparams":
        iterations = len(edits) if iterations is None else min(iterations, len(edits))
    done = 0
    for index in range(args.shard[0], iterations, args.shard[1]):
        if time.monotonic() > deadline:
            break
        rng = random.Random(f"{args.seed}-{target}-{index}")
        if target == "checkpoint":
            mutant = work / "mutant-checkpoint" / "ckpt"
            what = make_checkpoint_mutant(seeds["checkpoint"], mutant, rng)
        elif target == "hparams":
            what, offset, value = edits[index]
            data = bytearray(seed_bytes)
            data[offset:offset + len(value)] = value
            mutant = work / "mutant-hparams.gguf"
            mutant.write_bytes(data)
        else:
            data = bytearray(seed_bytes)
            what = ", ".join(mutate_gguf(data, fields, rng) for _ in range(rng.randint(1, 3)))
            mutant = work / f"mutant-{target}.gguf"
            mutant.write_bytes(data)
        outcome, message = worker_.ask(target, mutant, args.timeout)
        counts[outcome] += 1
        if outcome == "clean_error":
            refusals[re.sub(r"\d+", "N", message.replace(str(mutant), "FILE"))[:90]] += 1
        done += 1
        if outcome in ("crash", "sanitizer", "hang"):
            keep = saved / f"{target}-{args.seed}-{index}"
            if mutant.is_dir():  # the mutated files only: the links point at the seed's unchanged tokenizer files
                shutil.copytree(mutant, keep, dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if (Path(d) / n).is_symlink()])
            else:
                shutil.copy(mutant, keep.with_suffix(".gguf"))
            finding = {"target": target, "index": index, "outcome": outcome, "mutation": what, "message": message}
            findings.append(finding)
            print(f"fuzz: {outcome}: {target} #{index} ({what}): {message[:200]}", file=sys.stderr)
    return {"mutants": done, "counts": counts, "findings": findings, "refusals": refusals.most_common(8)}


def report_markdown(result: dict) -> str:
    lines = [f"# Fuzzing the Orthrus loaders ({result['build']})", "",
             f"Seed {result['seed']}, {result['minutes']:.1f} minutes, timeout {result['timeout']} s per mutant. "
             f"Reproduce: `python bench/fuzz.py --seed {result['seed']} --shard K/N ...` (K/N: {result['shard']}).",
             "",
             "| target | mutants | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for target, r in result["targets"].items():
        lines.append(f"| {target} | {r['mutants']} | " + " | ".join(str(r["counts"][o]) for o in OUTCOMES) + " |")
    for target, r in result["targets"].items():
        lines += ["", f"Most frequent refusals ({target}):"] + [f"- {n} x `{m}`" for m, n in r["refusals"]]
    findings = [f for r in result["targets"].values() for f in r["findings"]]
    lines += ["", f"Findings: {len(findings)}" + (" (inputs saved next to this report)" if findings else ".")]
    lines += [f"- {f['target']} #{f['index']} {f['outcome']} ({f['mutation']}): {f['message'][:300]}"
              for f in findings]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(report_markdown(result))
    print(report_markdown(result))


def merge_reports(paths: list[Path]) -> dict:
    """One report of the shards of a campaign (their JSON files): counts and refusals add up, findings join."""
    shards = [json.loads(path.read_text()) for path in paths]
    merged = {**shards[0], "shard": ", ".join(r["shard"] for r in shards), "minutes": max(r["minutes"] for r in shards),
              "targets": {}}
    for target in dict.fromkeys(t for r in shards for t in r["targets"]):
        parts = [r["targets"][target] for r in shards if target in r["targets"]]
        refusals = Counter()
        for part in parts:
            refusals.update(dict(part["refusals"]))
        merged["targets"][target] = {
            "mutants": sum(part["mutants"] for part in parts),
            "counts": {o: sum(part["counts"][o] for part in parts) for o in OUTCOMES},
            "findings": [f for part in parts for f in part["findings"]], "refusals": refusals.most_common(8)}
    return merged


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N with 0 <= K < N, e.g. 0/2")
    return int(k), int(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="writes OUT.json and OUT.md (and OUT-inputs/ on findings)")
    parser.add_argument("--seed", type=int, default=0, help="mutant i of target T uses random.Random('SEED-T-i')")
    parser.add_argument("--iterations", type=int, default=None,
                        help="mutants per target (default: 10000 adapter, 2000 merged, 2000 checkpoint, every "
                             "hparams edit)")
    parser.add_argument("--minutes", type=float, default=120.0, help="time limit for the whole run")
    parser.add_argument("--targets", type=comma_list(choices=TARGETS), default=",".join(TARGETS),
                        help="comma-separated: adapter,merged,checkpoint,hparams")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a mutant may take before it is a hang")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                        help="only mutants K, K+N, K+2N, ... of each target: N processes with K = 0..N-1 run one "
                             "campaign in parallel (each writes its own report; the counts add up)")
    parser.add_argument("--sanitize", action="store_true",
                        help="run the workers on the ASan + UBSan build (`pyorthrus build --sanitize`, built once "
                             "and cached; 15-30 minutes on 2 cores the first time)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="SHARD.json",
                        help="write one report (OUT.json, OUT.md) of the shards' reports instead of fuzzing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.out is None:
        parser.error("--out is required")
    if args.merge:
        write_report(merge_reports(args.merge), args.out)
        return 0

    from pyorthrus import build

    if args.sanitize:
        built = subprocess.run([sys.executable, "-m", "pyorthrus.build", "--backend", "cpu", "--sanitize", "--json"],
                               stdout=subprocess.PIPE, text=True)
        if built.returncode != 0:
            raise SystemExit("fuzz: the sanitizer build failed (see `pyorthrus build --sanitize`)")
        info = json.loads(built.stdout)  # the build's record, with the environment that runs Python on it
        env = info["env"]
        label = f"{info['backend']} {info['flavour']} build with ASan + UBSan"
    else:
        env, info = {}, build.installed_build_info().get("build") or {}
        label = f"{info.get('backend', '?')} {info.get('flavour', '?')} build"
    start = time.monotonic()
    saved = args.out.parent / f"{args.out.name}-inputs"
    saved.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyorthrus-fuzz-") as tmp:
        work = Path(tmp)
        seeds = make_seeds(work)
        worker_ = Worker(seeds["base"], work / "worker.stderr", env)
        results = {}
        try:
            for i, target in enumerate(args.targets):
                remaining = start + args.minutes * 60 - time.monotonic()
                deadline = time.monotonic() + remaining / (len(args.targets) - i)
                iterations = args.iterations if args.iterations is not None else TARGETS[target]
                results[target] = fuzz_target(target, seeds, iterations, deadline, args, work, worker_, saved)
                print(f"fuzz: {target}: {results[target]['mutants']} mutants, {results[target]['counts']}",
                      file=sys.stderr)
        finally:
            worker_.stop()
    if not any(saved.iterdir()):
        saved.rmdir()
    result = {"seed": args.seed, "shard": "/".join(map(str, args.shard)), "minutes": (time.monotonic() - start) / 60,
              "timeout": args.timeout,
              "build": f"{label}, {len(info.get('patches', []))} patches", "targets": results}
    write_report(result, args.out)
    bad = sum(r["counts"][o] for r in results.values() for o in ("crash", "sanitizer", "hang"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
