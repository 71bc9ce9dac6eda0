"""Self-distillation data for the SmolLM2-135M Orthrus adapter: answers the base model generates itself.

The drafts must predict what the base model will say, so the training text is the base model's own greedy output
(llama.cpp, the same Q4_1 GGUF that runs at inference) on a mix of chat, structured (lists / tables / JSON), code
and math prompts kept DISJOINT from every benchmark and evaluation set: bench/train_prompts.py lists the sources
(FreshQA, PersistBench and WritingBench from `inspect-evals`, standard-library docstrings, GSM8K 200-1318, GPQA)
and what is held out (GSM8K 0-199, HumanEval, pyorthrus.prompts).

Output: JSONL, one record per prompt: {"kind", "source", "index", "system", "prompt", "text", "ids", "n_prompt",
"n_completion", "finish"}; `text` is the chat-formatted full text (template + answer) and `ids` its token ids
(prompt tokens + generated tokens, exactly as generated, no re-tokenisation). Appends and skips prompts already
present, so an interrupted run resumes.

    python bench/train_data.py --out ~/.cache/pyorthrus/train/smollm2_selfdistill.jsonl --minutes 15
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pyorthrus import assets
from pyorthrus.prompts import GSM8K_BENCH_SIZE
from train_prompts import heldout_gsm8k, training_prompts

SYSTEM = assets.EMBEDDED_SYSTEM_PROMPT  # the system message the shipped adapter is trained and run under


def chat_text(llm, question: str) -> str:
    from pyorthrus.model import chat_template_prompt

    return chat_template_prompt(llm, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])


def generate_parallel(llm, jobs: list[tuple[object, list[int]]], max_tokens: int, eos: set[int], n_parallel: int,
                      n_threads: int, n_ctx_seq: int = 1024):
    """Greedy answers for many prompts at once: one llama.cpp context holding n_parallel sequences, one decode per
    step with a token from every live sequence. On a CPU this is several times the throughput of one sequence at a
    time (matrix-matrix instead of matrix-vector products). Yields (job, generated ids, finish) as answers end."""
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp._internals import LlamaBatch

    from pyorthrus.engine import fill_batch

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx_seq * n_parallel, n_ctx_seq, n_ctx_seq
    params.n_seq_max, params.kv_unified = n_parallel, False
    params.n_threads = params.n_threads_batch = n_threads
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    if not ctx:
        raise RuntimeError("could not create a parallel llama.cpp context")
    n_vocab = llm.n_vocab()
    batch = LlamaBatch(n_tokens=n_ctx_seq, embd=0, n_seq_max=1, verbose=False)
    memory = llama_cpp.llama_get_memory(ctx)

    def decode(rows: list[tuple[int, int, int, bool]]) -> None:  # (token, pos, seq, want logits)
        fill_batch(batch, rows)
        if llama_cpp.llama_decode(ctx, batch.batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(row: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(ctx, row)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))))

    pending = list(jobs)
    slots: dict[int, dict] = {}  # seq id -> {"job", "pos", "next", "out"}
    try:
        while pending or slots:
            for seq in range(n_parallel):  # refill free sequences, one prompt prefill each
                if seq in slots or not pending:
                    continue
                job, ids = pending.pop(0)
                llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
                decode([(t, i, seq, i == len(ids) - 1) for i, t in enumerate(ids)])
                slots[seq] = {"job": job, "pos": len(ids), "next": argmax(len(ids) - 1), "out": []}
            live = sorted(slots)
            for seq in live:
                slot = slots[seq]
                slot["out"].append(slot["next"])
            done = [s for s in live if slots[s]["next"] in eos or len(slots[s]["out"]) >= max_tokens]
            for seq in done:
                slot = slots.pop(seq)
                yield slot["job"], slot["out"], "stop" if slot["next"] in eos else "length"
            live = sorted(slots)
            if not live:
                continue
            decode([(slots[s]["next"], slots[s]["pos"], s, True) for s in live])
            for row, seq in enumerate(live):
                slots[seq]["pos"] += 1
                slots[seq]["next"] = argmax(row)
    finally:
        batch.close()
        llama_cpp.llama_free(ctx)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/pyorthrus/train/smollm2_selfdistill.jsonl")
    parser.add_argument("--model", type=Path, default=None, help="base GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--max-prompts", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=15.0, help="stop after this much generation time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=16, help="sequences generated at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help="instead: answers to the first N reserved GSM8K problems (evaluation only, never train)")
    args = parser.parse_args(argv)

    import llama_cpp

    if args.model is None:
        args.model = assets.smollm2_gguf()
    llm = llama_cpp.Llama(str(args.model), n_ctx=256, n_threads=args.threads, verbose=False)
    eos = {llm.token_eos()}
    for name in ("<|im_end|>", "<|endoftext|>"):
        ids = llm.tokenize(name.encode(), add_bos=False, special=True)
        if len(ids) == 1:
            eos.add(ids[0])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done.add((rec["source"], rec["index"]))
    if args.heldout:
        heldout = heldout_gsm8k(min(args.heldout, GSM8K_BENCH_SIZE))
        prompts = [("math", "gsm8k-heldout", i, q) for i, q in enumerate(heldout)]
    else:
        prompts = training_prompts(args.seed)
    todo = []
    for kind, source, index, question in prompts:
        if (source, index) in done or len(done) + len(todo) >= args.max_prompts:
            continue
        prompt = chat_text(llm, question)
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        if len(prompt_ids) + args.max_tokens <= 1000:
            todo.append(((kind, source, index, question, prompt, prompt_ids), prompt_ids))
    t0, n_tok, n_done = time.time(), 0, 0
    with args.out.open("a") as fh:
        for (kind, source, index, question, prompt, prompt_ids), out, finish in generate_parallel(
                llm, todo, args.max_tokens, eos, args.parallel, args.threads):
            completion = llm.detokenize(out, special=True).decode("utf-8", errors="replace")
            rec = {"kind": kind, "source": source, "index": index, "system": SYSTEM, "prompt": question,
                   "text": prompt + completion, "ids": list(prompt_ids) + out, "n_prompt": len(prompt_ids),
                   "n_completion": len(out), "finish": finish}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            n_tok, n_done = n_tok + len(out), n_done + 1
            el = time.time() - t0
            print(f"[{n_done}/{len(todo)}] {source}:{index} {len(out)} tok  total {n_tok} tok  {n_tok / el:.1f} tok/s",
                  flush=True)
            if el > args.minutes * 60:
                break
    print(f"done: {len(done) + n_done} prompts in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
