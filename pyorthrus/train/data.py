"""Training data: documents from JSONL / text files, packed into fixed-length sequences, with per-step blocks.

Sources:
- `.jsonl`: one document per line, `{"ids": [...]}` (token ids, used as they are) or `{"text": "..."}` (tokenized with
  the base model's tokenizer, special tokens parsed). An optional `"n_prompt"` (tokens of the prompt) restricts the
  blocks to the answer: the first block may start at the prompt's last token (the first draft of a decode).
- anything else: plain UTF-8 text, split into documents at blank lines.

Documents longer than the sequence length are cut into pieces. Packing is deterministic given the seed; each epoch
visits the sequences in a seed-and-epoch-determined order, and each step draws a random anchor offset per document
from a generator seeded with (seed, step), so the batch of step n is the same whether or not training was resumed.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PyorthrusError
from .model import PackedBatch, pack_batch


@dataclass
class Document:
    ids: list[int]
    lo: int = 0  # first index where a block may start


def _tokenizer_for(base):
    """A callable text -> ids for a base GGUF (llama.cpp vocab) or an HF directory (transformers)."""
    base = Path(base)
    if base.suffix == ".gguf":
        import llama_cpp

        from ..model import quiet_llama_warnings

        quiet_llama_warnings()  # a vocab-only qwen35 context warns that it has no training context
        llm = llama_cpp.Llama(str(base), vocab_only=True, verbose=False)
        return lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def read_documents(paths, base=None, max_docs: int | None = None) -> list[Document]:
    docs: list[Document] = []
    tokenize = None
    for path in map(Path, paths):
        if not path.is_file():
            raise PyorthrusError(f"{path}: training data file does not exist")
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise PyorthrusError(f"{path}:{n}: invalid JSON ({exc})") from None
                if "ids" in rec:
                    ids = [int(t) for t in rec["ids"]]
                elif "text" in rec:
                    if tokenize is None:
                        tokenize = _tokenizer_for(base)
                    ids = list(tokenize(rec["text"]))
                else:
                    raise PyorthrusError(f"{path}:{n}: a record needs \"ids\" or \"text\"")
                lo = max(0, int(rec.get("n_prompt", 1)) - 1)
                docs.append(Document(ids, lo))
        else:
            if tokenize is None:
                tokenize = _tokenizer_for(base)
            for chunk in path.read_text(errors="replace").split("\n\n"):
                if chunk.strip():
                    docs.append(Document(list(tokenize(chunk))))
    docs = [d for d in docs if len(d.ids) - 2 >= d.lo]
    if not docs:
        raise PyorthrusError(f"{', '.join(map(str, paths))}: no usable training documents")
    return docs[:max_docs] if max_docs else docs


def split_long(docs: list[Document], seq_len: int) -> list[Document]:
    out = []
    for d in docs:
        if len(d.ids) <= seq_len:
            out.append(d)
            continue
        for start in range(0, len(d.ids), seq_len):
            piece = d.ids[start:start + seq_len]
            lo = max(0, d.lo - start)
            if len(piece) - 2 >= lo:
                out.append(Document(piece, lo))
    return out


def pack_sequences(docs: list[Document], seq_len: int, seed: int) -> list[list[Document]]:
    """First-fit packing of the (seed-shuffled) documents into sequences of at most seq_len tokens."""
    docs = split_long(docs, seq_len)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    # First fit: each document goes to the first sequence with room for it. A max-tree over the sequences' free
    # room (unopened sequences: all of it) finds that sequence in O(log n) rather than by a scan.
    size = 1
    while size < len(docs):
        size *= 2
    tree = [seq_len] * (2 * size)
    seqs: list[list[Document]] = []
    for i in order:
        n = len(docs[i].ids)
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= n else 2 * node + 1
        j = node - size
        if j == len(seqs):
            seqs.append([])
        seqs[j].append(docs[i])
        tree[node] -= n
        while node > 1:
            node //= 2
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
    return seqs


def block_starts(doc: Document, block_size: int, offset: int) -> list[int]:
    """Block starts lo+offset, lo+offset+K, ... while a block still predicts a token inside the document."""
    return list(range(doc.lo + offset, len(doc.ids) - 1, block_size))


class Batches:
    """The batch of any step, reproducibly."""

    def __init__(self, sequences: list[list[Document]], batch_size: int, block_size: int, mask_id: int,
                 seq_len: int, seed: int):
        if not sequences:
            raise PyorthrusError("no training sequences")
        self.sequences, self.batch_size, self.block_size = sequences, batch_size, block_size
        self.mask_id, self.seq_len, self.seed = mask_id, seq_len, seed
        self._epoch_orders: dict[int, list[int]] = {}

    @property
    def tokens_per_epoch(self) -> int:
        return sum(len(d.ids) for seq in self.sequences for d in seq)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_orders:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_orders = {epoch: torch.randperm(len(self.sequences), generator=gen).tolist()}
        return self._epoch_orders[epoch]

    def indices(self, step: int) -> list[int]:
        n = len(self.sequences)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._order(k // n)[k % n])
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / len(self.sequences)

    def batch(self, step: int) -> PackedBatch:
        gen = torch.Generator().manual_seed(self.seed * 7_919 + step + 1)
        seqs = []
        for i in self.indices(step):
            docs = []
            for d in self.sequences[i]:
                offset = int(torch.randint(0, self.block_size, (1,), generator=gen))
                starts = block_starts(d, self.block_size, offset)
                if not starts:  # a short answer: still train its first block
                    starts = [d.lo]
                docs.append((d.ids, starts))
            seqs.append(docs)
        return pack_batch(seqs, self.block_size, self.mask_id, self.seq_len)


def eval_batches(docs: list[Document], block_size: int, mask_id: int, seq_len: int, batch_size: int = 4):
    """Deterministic held-out batches: blocks at lo, lo+K, ... (offset 0) in every document."""
    seqs = pack_sequences(docs, seq_len, seed=0)
    for i in range(0, len(seqs), batch_size):
        group = [[(d.ids, block_starts(d, block_size, 0) or [d.lo]) for d in seq] for seq in seqs[i:i + batch_size]]
        yield pack_batch(group, block_size, mask_id, seq_len)


def base_vocab(base) -> list[str]:
    """The token texts by id of a base (GGUF, or HF directory with tokenizer.json; else none): the trainers'
    default_mask_token and bench/gpu_gen.py look tokens up by text in it."""
    base = Path(base)
    if base.suffix == ".gguf":
        from ..gguf_meta import gguf_field, open_reader

        return list(gguf_field(open_reader(base), "tokenizer.ggml.tokens", []) or [])
    tok = base / "tokenizer.json"
    if tok.is_file():
        spec = json.loads(tok.read_text())
        vocab = dict(spec.get("model", {}).get("vocab", {}))
        vocab.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
        out = [""] * (max(vocab.values()) + 1 if vocab else 0)
        for text, i in vocab.items():
            out[i] = text
        return out
    return []
