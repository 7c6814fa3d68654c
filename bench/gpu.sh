#!/usr/bin/env bash
# Every precision (fp32, bf16, fp16) on a CUDA GPU: extraction speed against the classic cirtorch loop,
# oxford5k-mini mAP, training step time and a short training run, as one Markdown table.
#
#   bench/gpu.sh [--device cuda] [--out runs/gpu] [--quick] [extra options of bench/precision_report.py]
#
# Writes OUT/precision.md (the table), OUT/precision.json and OUT/gpu.txt (nvidia-smi, when there is one).
# --quick uses tiny sizes and few images (a check that the script runs, e.g. with --device cpu); its
# numbers mean nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
device=cuda
out=runs/gpu
quick=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=(--size 64 --images 3 --repeat 1 --train-size 64 --train-batch 3 --train-steps 1 --queries 2); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
python="${PYTHON:-python}"
mkdir -p "$out"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" || true
fi
"$python" "$here/precision_report.py" --device "$device" --out "$out" "${quick[@]}" "${extra[@]}"
