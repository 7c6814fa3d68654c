#!/usr/bin/env bash
# The training experiment of docs/training.md: finetune efficientnet_lite0-gem for ranking on the Paris
# list (../shared/data/paris-train.txt: 245 real Paris photos of 5 landmarks, `path label` lines),
# evaluate on oxford5k-mini (another city) before and after, with and without whitening learned on
# the same list. Never evaluate these networks on rparis6k-mini: the list is its photos.
# Usage: scripts/training_experiment.sh [OUT]   (default runs/training; about 25 minutes on 2 shared CPU cores)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT=${1:-runs/training}
DATA=../shared/data
TRAIN=$DATA/paris-train.txt
MODEL=efficientnet_lite0-gem  # the fast model: a step of the default (Lite2) costs about 2.3x on a CPU
EVAL=(--dataset oxford5k-mini --root "$DATA" --quiet)   # at the model's default size (384 px)
PCA_DIM=128  # 245 descriptors span at most 244 directions after centring: keep about half of them
mkdir -p "$OUT"

deepret eval "${EVAL[@]}" --model $MODEL --json "$OUT/before.json"
deepret whiten --model $MODEL --train "$TRAIN" --method pca --dim $PCA_DIM --out "$OUT/before-pcaw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/before-pcaw.pt" --json "$OUT/before-pcaw.json"
deepret whiten --model $MODEL --train "$TRAIN" --method lw --shrinkage 1 --out "$OUT/before-lw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/before-lw.pt" --json "$OUT/before-lw.json"

[[ -f "$OUT/rank/last.pt" ]] && RESUME=--resume || RESUME=
deepret train rank --model $MODEL --data "$TRAIN" --out "$OUT/rank" --epochs 2 --size 362 --queries 23 --negatives 3 \
  --pool-size 60 --batch-size 4 --lr 1e-6 --augment all --seed 0 --quiet $RESUME
deepret eval "${EVAL[@]}" --model "$OUT/rank/last.pt" --json "$OUT/after.json"
deepret whiten --model "$OUT/rank/last.pt" --train "$TRAIN" --method pca --dim $PCA_DIM --out "$OUT/after-pcaw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/after-pcaw.pt" --json "$OUT/after-pcaw.json"
deepret whiten --model "$OUT/rank/last.pt" --train "$TRAIN" --method lw --shrinkage 1 --out "$OUT/after-lw.pt"
deepret eval "${EVAL[@]}" --model "$OUT/after-lw.pt" --json "$OUT/after-lw.json"

python - "$OUT" "$PCA_DIM" <<'PY'
import json, sys, pathlib
out, dim = pathlib.Path(sys.argv[1]), sys.argv[2]
print("| network | whitening (learned on the Paris list) | dim | oxford5k-mini mAP | mP@5 |")
print("|---|---|---|---|---|")
for stem, net, w in [("before", "ImageNet", "none"), ("before-pcaw", "ImageNet", f"PCA-w to {dim}-d (245 images)"),
                     ("before-lw", "ImageNet", "Lw, shrinkage 1"), ("after", "finetuned (triplet)", "none"),
                     ("after-pcaw", "finetuned (triplet)", f"PCA-w to {dim}-d (245 images)"),
                     ("after-lw", "finetuned (triplet)", "Lw, shrinkage 1")]:
    r = json.loads((out / f"{stem}.json").read_text())
    dim_out = (r["model"].get("whitening") or {}).get("dim_out") or r["model"]["dim"]
    old = r["protocols"]["old"]
    print(f"| {net} | {w} | {dim_out} | {old['mAP']:.2f} | {old['mP@k']['5']:.2f} |")
PY
