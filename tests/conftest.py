"""Shared fixtures: the real SmolLM2 model and the installed, patched llama.cpp."""
from __future__ import annotations

import pytest

from pyorthrus import assets


@pytest.fixture(scope="session")
def smollm2_path():
    return assets.smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """One loaded SmolLM2-135M Q4_1 shared by the tests that only read from it (greedy, fresh context state)."""
    import llama_cpp

    return llama_cpp.Llama(str(smollm2_path), n_ctx=512, n_threads=2, seed=0, verbose=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For the PyTorch test modules: their matrices are tiny, so OpenMP hand-offs cost more than the work (and
    2-core CI machines are shared); run single-threaded and restore the setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
