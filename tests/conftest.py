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
