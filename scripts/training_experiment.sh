#!/usr/bin/env bash
# The training experiment of docs/training.md: finetune the default model on landmarks-mini for
# ranking, evaluate on oxford5k-mini before and after, with and without whitening.
# Usage: scripts/training_experiment.sh [OUT]   (default runs/training; about 15 minutes on 2 CPU cores)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT=${1:-runs/training}
DATA=../shared/data
LM=$DATA/landmarks-mini
EVAL=(--dataset oxford5k-mini --root "$DATA" --size 512 --quiet)
mkdir -p "$OUT"

deepret eval "${EVAL[@]}" --json "$OUT/before.json"
deepret whiten --train "$LM" --method pca --dim 22 --size 512 --out "$OUT/before-pcaw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/before-pcaw.pt" --json "$OUT/before-pcaw.json"
deepret whiten --train "$LM" --method lw --shrinkage 1 --size 512 --out "$OUT/before-lw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/before-lw.pt" --json "$OUT/before-lw.json"

[[ -f "$OUT/rank/last.pt" ]] && RESUME=--resume || RESUME=
deepret train rank --data "$LM" --out "$OUT/rank" --epochs 5 --size 362 --queries 23 --negatives 3 \
  --pool-size 23 --batch-size 4 --lr 1e-6 --augment all --seed 0 \
  --val oxford5k-mini --val-root "$DATA" --val-every 5 --val-size 512 --quiet $RESUME
deepret eval "${EVAL[@]}" --model "$OUT/rank/last.pt" --json "$OUT/after.json"
deepret whiten --model "$OUT/rank/last.pt" --train "$LM" --method pca --dim 22 --size 512 --out "$OUT/after-pcaw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/after-pcaw.pt" --json "$OUT/after-pcaw.json"
deepret whiten --model "$OUT/rank/last.pt" --train "$LM" --method lw --shrinkage 1 --size 512 --out "$OUT/after-lw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/after-lw.pt" --json "$OUT/after-lw.json"

python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| network | whitening (learned on landmarks-mini) | dim | oxford5k-mini mAP | mP@5 |")
print("|---|---|---|---|---|")
for stem, net, w in [("before", "ImageNet", "none"), ("before-pcaw", "ImageNet", "PCA-w to 22-d (23 images)"),
                     ("before-lw", "ImageNet", "Lw, shrinkage 1"), ("after", "finetuned (triplet)", "none"),
                     ("after-pcaw", "finetuned (triplet)", "PCA-w to 22-d (23 images)"),
                     ("after-lw", "finetuned (triplet)", "Lw, shrinkage 1")]:
    r = json.loads((out / f"{stem}.json").read_text())
    dim = (r["model"].get("whitening") or {}).get("dim_out") or r["model"]["dim"]
    old = r["protocols"]["old"]
    print(f"| {net} | {w} | {dim} | {old['mAP']:.2f} | {old['mP@k']['5']:.2f} |")
PY
