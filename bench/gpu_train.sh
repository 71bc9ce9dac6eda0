#!/usr/bin/env bash
# Train the Orthrus adapter of a GGUF base on one lent GPU, in one command that fits a 9-minute device call:
# sampled self-distillation answers are generated ON the device from the base (bench/gpu_gen.py), then
# `pyorthrus train --device cuda` trains on them and on the carried greedy answers for a fixed time budget, and the
# adapter comes back as Q8_0 with its growth curve. Only the base and the greedy answers (and the adapter to
# continue from) travel; the sampled data is made where it is used.
#
#   bash bench/gpu_train.sh OUT_DIR BASE.gguf GREEDY.jsonl [INIT_ADAPTER.gguf]
#
# GREEDY.jsonl: bench/train_data.py's llama.cpp greedy answers; their prompts (ids[:n_prompt]) are what gets sampled.
# Every 50th record is held out of training and sampling: the trainer's held-out acceptance (the curve) uses it.
# Knobs, from the environment (defaults in brackets): GPU_TRAIN_GEN_MINUTES [1.5] of sampling,
# GPU_TRAIN_SAMPLES [16] answers per prompt at GPU_TRAIN_TEMPERATURE [0.8], of GPU_TRAIN_MAX_TOKENS [384] tokens at
# most, GPU_TRAIN_GEN_BATCH [1024] sequences decoded at once, GPU_TRAIN_MINUTES [3.5] of training
# (the learning-rate schedule spans them), GPU_TRAIN_LR [3e-4], GPU_TRAIN_BATCH [64] sequences of 512 tokens a step,
# GPU_TRAIN_KEEP [100] steps between kept checkpoints, DEVICE [cuda], PYTHON [python3].
#
# Writes OUT_DIR/run.log (every step's output, timings), OUT_DIR/train_log.jsonl (the trainer's log: tokens,
# training and held-out acceptance), OUT_DIR/adapter.q8_0.gguf (the final adapter) and
# OUT_DIR/adapter_stepNNNNNN.q8_0.gguf (the kept checkpoints nearest 1/3 and 2/3 of the run), so that
# bench/train_eval.py can measure the curve in llama.cpp.
#
# Through this project's device tool (an H200, 2026-12-04) a call carries at most 64 MiB and a carried path is gone
# in the next call: bench/gpu_carry.sh prepares the three calls that get the inputs there (the 98 MB base in two
# parts), prints them, and joins the adapters that come back. Measured there: sampling 6.5-9.2k answer tokens/s,
# training 78-92k tokens/s (bf16); bench/results/gpu_train_h200_*.
set -euo pipefail
out=${1:?usage: bash bench/gpu_train.sh OUT_DIR BASE.gguf GREEDY.jsonl [INIT_ADAPTER.gguf]}
base=${2:?base GGUF missing}
greedy=${3:?greedy answers JSONL missing}
init=${4:-}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
for f in "$base" "$greedy" ${init:+"$init"}; do
    [ -f "$f" ] || { echo "gpu_train.sh: $f does not exist" >&2; exit 2; }
done
# Fail in seconds, not after the training, if this Python cannot run every step (a bare checkout, no install).
"$python" -c "import gguf, safetensors, torch" || exit 2
"$python" convert/cli.py --help > /dev/null || exit 2
mkdir -p "$out"
work=$(mktemp -d)  # sampled data and full-precision checkpoints: large, kept out of OUT_DIR; removed on success only
log="$out/run.log"
: > "$log"
say() { echo "== $* (at ${SECONDS} s)" | tee -a "$log" >&2; }
trap 'say "failed; the work so far is kept in $work"' ERR

awk 'NR % 50 != 0' "$greedy" > "$work/greedy.jsonl"
awk 'NR % 50 == 0' "$greedy" > "$work/heldout.jsonl"
say "sampling: $(wc -l < "$work/greedy.jsonl") prompts x ${GPU_TRAIN_SAMPLES:-16}, $(wc -l < "$work/heldout.jsonl") held out"
"$python" bench/gpu_gen.py --base "$base" --prompts "$work/greedy.jsonl" --out "$work/sampled.jsonl" \
    --device "$device" --samples "${GPU_TRAIN_SAMPLES:-16}" --temperature "${GPU_TRAIN_TEMPERATURE:-0.8}" \
    --max-tokens "${GPU_TRAIN_MAX_TOKENS:-384}" --batch "${GPU_TRAIN_GEN_BATCH:-1024}" \
    --minutes "${GPU_TRAIN_GEN_MINUTES:-1.5}" 2>&1 | tee -a "$log"

say "training for ${GPU_TRAIN_MINUTES:-3.5} min${init:+ from $init}"
"$python" -m pyorthrus train --base "$base" --data "$work/greedy.jsonl" "$work/sampled.jsonl" --out "$work/run" \
    --device "$device" --batch-size "${GPU_TRAIN_BATCH:-64}" --lr "${GPU_TRAIN_LR:-3e-4}" --warmup-steps 20 \
    --schedule-minutes "${GPU_TRAIN_MINUTES:-3.5}" --keep-every "${GPU_TRAIN_KEEP:-100}" --log-every 10 \
    --eval-data "$work/heldout.jsonl" --eval-every 50 ${init:+--init-from "$init"} --json 2>&1 | tee -a "$log"
cp "$work/run/train_log.jsonl" "$out/"

say "converting to Q8_0"
"$python" convert/cli.py "$work/run" --adapter-out "$out/adapter.q8_0.gguf" --outtype q8_0 2>&1 | tee -a "$log"
kept=("$work"/run/step*)
if [ -d "${kept[0]}" ]; then
    n=${#kept[@]}
    for i in $(printf '%s\n' $(( n / 3 )) $(( 2 * n / 3 )) | sort -u); do
        [ "$i" -lt "$n" ] && [ "$i" -ge 1 ] || continue
        step=$(basename "${kept[$((i - 1))]}")
        "$python" convert/cli.py "${kept[$((i - 1))]}" --adapter-out "$out/adapter_$step.q8_0.gguf" \
            --outtype q8_0 2>&1 | tee -a "$log"
    done
fi
rm -rf "$work"
say "done"
