"""The distribution llama.cpp samples a token from, written out independently of it, once for everything in Python
that needs it: the PyTorch reference's speculative sampling and the tests' checks of the C loop."""
from __future__ import annotations

import numpy as np


def sampling_distribution(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0,
                          min_p: float = 0.0) -> np.ndarray:
    """Probabilities (float64) of one row of logits with these flags: top-k (0: off), top-p (1: off; the mass of
    the survivors' softmax) and min-p (0: off) on the raw logits, then softmax(logit / temperature) over what is
    kept, in common_sampler's and llama_cpp.Llama's order; ties ordered by lower token id, as llama.cpp's sort.
    Temperature <= 0 is greedy: all mass on the argmax."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return np.eye(1, len(z), int(np.argmax(z)), dtype=np.float64)[0]
    order = np.lexsort((np.arange(len(z)), -z))  # descending logit, lower id first on ties
    top = z[order[0]]
    keep = len(z)
    if 0 < top_k < keep:
        keep = top_k
    if top_p < 1.0:
        p = np.exp(z[order[:keep]] - top)
        keep = min(keep, int(np.searchsorted(np.cumsum(p / p.sum()), top_p)) + 1)
    if min_p > 0.0:
        keep = max(1, int(np.sum(z[order[:keep]] >= top + np.log(min_p))))
    q = np.zeros_like(z)
    q[order[:keep]] = np.exp((z[order[:keep]] - top) / temperature)
    return q / q.sum()
