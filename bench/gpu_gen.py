"""Sampled self-distillation answers on a GPU, from the PyTorch reference of the base (step 1 of bench/gpu_train.sh).

The shipped adapter learns to predict what the base model says next. bench/train_data.py makes the greedy answers
with llama.cpp on a CPU (~120 answer tokens/s on 2 cores); its prompt pool is used up. A GPU can instead draw many
SAMPLED answers per prompt (temperature T) in minutes: more and more varied contexts of the base's own distribution,
and the trainer's teacher is the base's AR logits at every position, so a sampled answer is as valid a context as
a greedy one. This script reads prompts from train_data.py's JSONL (the prompt is `ids[:n_prompt]`, exactly the
chat-templated tokens llama.cpp made) and writes records the trainer reads: {"kind", "source", "index", "sample",
"temperature", "ids" (prompt + answer), "n_prompt", "n_completion", "finish"}.

Batched decoding with a static KV cache: prompts sorted by length, left-padded, `--batch` sequences per step.

    python bench/gpu_gen.py --base BASE.gguf --prompts mix.jsonl --out sampled.jsonl --samples 4 --minutes 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyorthrus.files import atomic_write  # noqa: E402
from pyorthrus.gguf_meta import gguf_field, open_reader  # noqa: E402
from pyorthrus.reference import load_gguf  # noqa: E402
from pyorthrus.train.data import base_vocab  # noqa: E402
from pyorthrus.train.model import attend, head, qkv, rope_tables  # noqa: E402

EOS_NAMES = ("<|im_end|>", "<|endoftext|>")


def eos_ids(base: Path) -> set[int]:
    ids = {int(gguf_field(open_reader(base), "tokenizer.ggml.eos_token_id"))}
    vocab = base_vocab(base)
    return ids | {vocab.index(name) for name in EOS_NAMES if name in vocab}


def _attention(model, w, q, k, v, mask):
    """A prefill goes through the trainer's `attend`; a decode step (one query per head) reads K/V in place."""
    cfg = model.cfg
    B, H, L, hd = q.shape
    group = H // cfg.num_kv_heads
    if L > 1 or group == 1:
        return attend(model, w, q, k, v, mask[:, 0])
    # A kv head's group of query heads become its `group` query rows, so the cache's K and V are read in place
    # instead of being copied once per query head.
    out = F.scaled_dot_product_attention(q.reshape(B, cfg.num_kv_heads, group, hd), k, v, attn_mask=mask)
    return w.o_proj(out.reshape(B, H, 1, hd).transpose(1, 2).reshape(B, 1, H * hd))


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], max_new: int, temperature: float, eos: torch.Tensor,
                 gen: torch.Generator) -> list[tuple[list[int], str]]:
    """(answer ids, "stop" | "length") per prompt; temperature 0 is greedy."""
    cfg, emb = model.cfg, model.embed_tokens.weight
    dev, dtype = emb.device, emb.dtype
    B, P = len(prompts), max(map(len, prompts))
    pad = torch.tensor([P - len(p) for p in prompts], device=dev)
    ids = torch.zeros(B, P, dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p, device=dev)
    keys = torch.arange(P + max_new, device=dev)
    valid = keys[None] >= pad[:, None]                                              # [B, P + max_new]
    cache = [(torch.zeros(B, cfg.num_kv_heads, P + max_new, cfg.head_dim, device=dev, dtype=dtype),
              torch.zeros(B, cfg.num_kv_heads, P + max_new, cfg.head_dim, device=dev, dtype=dtype))
             for _ in model.layers]

    def forward(x, pos, start, mask):  # tokens x [B, L] at cache columns start .. start+L-1
        L = x.shape[1]
        cos, sin = rope_tables(model, pos, dtype)
        h = model.embed_tokens(x)
        for layer, (kc, vc) in zip(model.layers, cache):
            q, k, v = qkv(model, layer.attn, layer.input_layernorm(h), cos, sin)
            kc[:, :, start:start + L], vc[:, :, start:start + L] = k, v
            h = h + _attention(model, layer.attn, q, kc[:, :, :start + L], vc[:, :, :start + L], mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return head(model, h[:, -1]).float()

    causal = keys[:P, None] >= keys[None, :P]
    prefill_mask = (causal[None] & valid[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=dev)  # pad rows: self
    logits = forward(ids, (keys[None, :P] - pad[:, None]).clamp_min(0), 0, prefill_mask[:, None])
    out = torch.empty(B, max_new, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    n = max_new
    for t in range(max_new):
        if temperature > 0:
            token = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=gen)[:, 0]
        else:
            token = logits.argmax(-1)
        out[:, t] = token
        done |= torch.isin(token, eos)
        if t + 1 == max_new or (t % 16 == 15 and bool(done.all())):
            n = t + 1
            break
        col = P + t
        logits = forward(token[:, None], (col - pad)[:, None], col, valid[:, None, None, :col + 1])
    rows = out[:, :n].tolist()
    eos_set = set(eos.tolist())
    answers = []
    for row in rows:
        cut = next((i for i, tok in enumerate(row) if tok in eos_set), None)
        answers.append((row, "length") if cut is None else (row[:cut + 1], "stop"))
    return answers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="base GGUF")
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL with \"ids\" and \"n_prompt\"")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL (written to a temp name, then renamed)")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt (default 4)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--max-tokens", type=int, default=384, help="answer tokens at most (default 384)")
    parser.add_argument("--batch", type=int, default=1024,
                        help="sequences decoded at once (default 1024: 9.2k answer tokens/s on an H200)")
    parser.add_argument("--minutes", type=float, default=None, help="start no new batch after this much time")
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    prompts = []
    for n, line in enumerate(args.prompts.read_text().splitlines(), 1):
        if line.strip():
            rec = json.loads(line)
            if "ids" not in rec or "n_prompt" not in rec:
                raise SystemExit(f"{args.prompts}:{n}: a prompt record needs \"ids\" and \"n_prompt\"")
            prompts.append(({k: rec[k] for k in ("kind", "source", "index") if k in rec}, rec["ids"][:rec["n_prompt"]]))
    prompts = sorted(prompts[:args.max_prompts], key=lambda p: len(p[1]))  # by length: little padding per batch
    # Round by round (sample 0 of every prompt first), so a --minutes cut keeps every prompt and kind.
    jobs = [(meta, j, ids) for j in range(args.samples) for meta, ids in prompts]
    on_cuda = torch.device(args.device).type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    model = load_gguf(args.base).to(args.device, dtype).eval()
    eos = torch.tensor(sorted(eos_ids(args.base)), device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)

    t0, n_answers, n_tokens = time.time(), 0, 0

    def write(tmp: Path) -> None:
        nonlocal n_answers, n_tokens
        with tmp.open("w") as fh:
            for i in range(0, len(jobs), args.batch):
                if args.minutes is not None and time.time() - t0 > args.minutes * 60:
                    break
                chunk = jobs[i:i + args.batch]
                answers = sample_batch(model, [p for _, _, p in chunk], args.max_tokens, args.temperature, eos, gen)
                for (meta, j, prompt), (answer, finish) in zip(chunk, answers):
                    fh.write(json.dumps({**meta, "sample": j, "temperature": args.temperature,
                                         "ids": prompt + answer, "n_prompt": len(prompt),
                                         "n_completion": len(answer), "finish": finish}) + "\n")
                    n_tokens += len(answer)
                n_answers += len(chunk)
                el = time.time() - t0
                print(f"[{n_answers}/{len(jobs)}] {n_tokens} answer tokens, {n_tokens / el:.0f} tok/s", flush=True)

    atomic_write(args.out, write)
    el = time.time() - t0
    print(json.dumps({"answers": n_answers, "answer_tokens": n_tokens, "seconds": round(el, 1),
                      "answer_tok_s": round(n_tokens / el, 1), "device": args.device,
                      "device_name": torch.cuda.get_device_name() if on_cuda else args.device}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
