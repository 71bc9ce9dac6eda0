#!/usr/bin/env bash
# The checks that need a GPU, which CI (CPU only) cannot run, in one go on a machine with a CUDA (or Metal) build:
#
#   pyorthrus build --backend cuda        # once
#   bash bench/gpu_suite.sh OUT_DIR [PROMPTS]
#
# 1. OUT_DIR/build.json: the installed build (backend, flags) as `pyorthrus build --check --json` reports it.
#    OUT_DIR/batch_variance.{log,json}: how far this backend's logits for a K-token batch are from K one-token
#    steps (plain llama.cpp, no Orthrus): the size of the near-ties where greedy Orthrus may part from AR.
# 2. OUT_DIR/reference_tests.log: tests/test_llama_orthrus_reference.py with every layer offloaded: both views'
#    logits against the PyTorch reference on the tiny F32 fixtures, at the tolerances the CPU build meets.
# 3. OUT_DIR/fidelity.{json,txt}: bench/fidelity.py --config fast -ngl -1, PROMPTS (default 20) GSM8K prompts x 128
#    tokens, SmolLM2 Q4_1/F16/Q8_0, K 4/8/16 (shipped adapter) and 32 (identity adapter), flash-attn off/on.
#    GPU kernels are not batch-invariant, so a divergence from greedy AR is possible; each is reported with the AR
#    logit margin where it happened.
#    OUT_DIR/fidelity_tree.{json,txt}: the same for tree verify (patch 0019), K 16 with trees of 16 nodes, Q4_1.
# 4. OUT_DIR/bench{,_fa}.{json,md}: `pyorthrus bench -ngl -1` (AR vs Orthrus at K 4/8/16, plain, fused and with
#    trees of 16 and 32 nodes, and auto, vs prompt lookup, side by side in one run), flash-attn off and on.
# 5. OUT_DIR/shapes{,_fa}.{json,md}: `pyorthrus bench --shape smollm2-135m,qwen3-8b --weights q4_k_m` with every
#    layer offloaded, flash-attn off / on: random-weight files of real shapes made ON the device (nothing carried;
#    the 8B needs ~25 GB of disk and ~6 GB of GPU memory), pass costs at prefixes 128 and 4096, whole cycles.
# 6. OUT_DIR/llama_server.{json,md}: llama-server built from the patched tree (`pyorthrus build --server`), AR vs
#    n-gram speculation vs `--spec-type orthrus` at K 4/8/16, 1/2/4 slots, every layer offloaded, side by side with
#    plain llama.cpp's llama-server (`--plain-server`, the peer) and pyorthrus's AR and auto.
# 7. OUT_DIR/hybrid.log: tests/test_recurrent_rollback.py and tests/test_qwen35_orthrus.py's state test with every
#    layer offloaded: the GPU's Gated DeltaNet snapshots restore the state before a removed block exactly (patch
#    0021), and the state after Orthrus cycles on a hybrid qwen35 and qwen35moe equals AR's (issue 37; tiny
#    random files).
# 8. OUT_DIR/shapes_hybrid.{json,md} (not a default step: ask for it in GPU_SUITE_STEPS): `pyorthrus bench --shape
#    qwen3.5-4b --weights q4_k_m`, the hybrid's pass and cycle costs with the state snapshots a cycle needs (about
#    11 GB of F16 made on the device first).
# 9. OUT_DIR/hybrid_train.{log,json}: bench/qwen35_train.py, the Qwen3.5 trainer on CUDA against the CPU (same
#    losses, seconds per step, the CUDA-trained twins decoded as AR), on a tiny shape and on a 4B-wide one of 8
#    layers (issue 37: the trainer is float32 and has not run on a GPU before).
# Each step has a time limit (GPU_SUITE_MINUTES, default 3 per step; fidelity.json keeps what finished) and the
# suite goes on past a failing step; the exit status is that of the first failing step. GPU_SUITE_STEPS picks
# steps (default: "batch_variance reference_tests fidelity fidelity_tree bench bench_fa shapes shapes_fa
# llama_server hybrid hybrid_train"; for the speed
# checks alone: GPU_SUITE_STEPS="shapes shapes_fa bench bench_fa").
set -u
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [PROMPTS]}
prompts=${2:-20}
python=${PYTHON:-python}
limit=$(( ${GPU_SUITE_MINUTES:-3} * 60 ))
cd "$(dirname "$0")/.."
mkdir -p "$out"
work=$(mktemp -d)  # quantized models and the identity adapter: large, kept out of OUT_DIR
trap 'rm -rf "$work"' EXIT
status=0
steps=" ${GPU_SUITE_STEPS:-batch_variance reference_tests fidelity fidelity_tree bench bench_fa shapes shapes_fa llama_server hybrid hybrid_train} "
step() {  # step NAME COMMAND...: run with the time limit, log to OUT_DIR/NAME.log, remember the first failure
    local name=$1 rc
    shift
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name: $*" >&2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" >&2
    tail -n 25 "$out/$name.log" >&2
    [ "$status" -eq 0 ] && status=$rc
    return 0
}

"$python" -m pyorthrus build --check --json > "$out/build.json" || exit 1
step batch_variance "$python" bench/batch_variance.py -ngl -1 --threads 4 --fa off,on --work "$work" \
    --json "$out/batch_variance.json"
step reference_tests env PYORTHRUS_TEST_N_GPU_LAYERS=-1 "$python" -m pytest -q -p no:cacheprovider \
    tests/test_llama_orthrus_reference.py
step hybrid env PYORTHRUS_TEST_N_GPU_LAYERS=-1 "$python" -m pytest -q -p no:cacheprovider \
    tests/test_recurrent_rollback.py tests/test_qwen35_orthrus.py -k "removing or beyond or state_after"
step hybrid_train bash -c "\"$python\" bench/qwen35_train.py --device cuda --steps 10 --json \"$out/hybrid_train.json\" && \
    \"$python\" bench/qwen35_train.py --device cuda --shape qwen3.5-4b --layers 8 --steps 5 --cpu-steps 2 --seq-len 512 \
    --json \"$out/hybrid_train_4b8l.json\""
step fidelity "$python" bench/fidelity.py --config fast -ngl -1 --threads 4 --prompts "$prompts" --tokens 128 \
    --quants Q4_1,F16,Q8_0 --ks 4,8,16,32 --fa off,on --adapter pyorthrus/data/smollm2-135m-orthrus-k16.q8_0.gguf \
    --work "$work" --json "$out/fidelity.json"
step fidelity_tree "$python" bench/fidelity.py --config fast -ngl -1 --threads 4 --prompts "$prompts" --tokens 128 \
    --quants Q4_1 --ks 16 --tree 16 --fa off,on --adapter pyorthrus/data/smollm2-135m-orthrus-k16.q8_0.gguf \
    --work "$work" --json "$out/fidelity_tree.json"
step bench "$python" -m pyorthrus bench -ngl -1 --no-flash-attn --n-prompts 10 -n 128 \
    --block-sizes 4,8,16,16t16,16t32,4f,8f,16f,auto --out "$out/bench"
step bench_fa "$python" -m pyorthrus bench -ngl -1 --flash-attn --n-prompts 10 -n 128 \
    --block-sizes 4,8,16,16t16,16t32,4f,8f,16f,auto --out "$out/bench_fa"
for fa in --no-flash-attn --flash-attn; do
    suffix=$([ "$fa" = --flash-attn ] && echo _fa)
    step "shapes$suffix" "$python" -m pyorthrus bench --shape smollm2-135m,qwen3-8b --weights q4_k_m \
        --prefixes 128,4096 -ngl -1 -t 4 $fa --shape-cache "$work/shapes" --out "$out/shapes$suffix"
done
step shapes_hybrid "$python" -m pyorthrus bench --shape qwen3.5-4b --weights q4_k_m --prefixes 128,4096 -ngl -1 -t 4 \
    --flash-attn --shape-cache "$work/shapes" --out "$out/shapes_hybrid"
step llama_server bash -c "\"$python\" -m pyorthrus build --server \"$work/bin\" --plain-server \"$work/bin\" && \
    \"$python\" bench/llama_server.py \"$work/bin/llama-server\" --peer \"$work/bin/llama-server-plain\" --pyorthrus \
    -ngl 99 -t 4 --n-prompts 8 --out \"$out/llama_server\""
exit "$status"
