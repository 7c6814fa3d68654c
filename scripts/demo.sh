#!/usr/bin/env bash
# The main job: evaluate the default model on oxford5k-mini (real photos in ../shared/data) and draw
# the top-k figure of query 0. Extra arguments go to `deepret eval` (e.g. --size 512, --model ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT=${OUT:-runs/oxford5k-mini}
mkdir -p "$OUT"
deepret eval --dataset oxford5k-mini --root ../shared/data --json "$OUT/eval.json" --figure "$OUT/topk.png" "$@"
