"""The sweep that chose the study's training budgets, scored on a validation split of the training list.

    python bench/study_sweep.py --out runs/sweep [--part rank|classify|starts|all] [--configs ...]

The training list (study.yaml's `train`, the Paris list by default) is split by image, seeded and
stratified (deepret.datasets.split, 20%): training uses the other 80%, and every validation image
queries the other validation images, positives = the same landmark (deepret.separation.label_map),
at the study's evaluation size. The evaluation benchmark is never used. Networks are the study's
(stand-ins where ImageNet weights are missing): ResNet18's role for the ranking steps (1f/1g),
AlexNet's fc7 role for 1b. Each training is scored after every epoch, so a run of N epochs also
gives the scores of the shorter budgets. Appends to <out>/sweep.jsonl; `--part table` prints it as
the markdown table of docs/training.md.

  starts:   the untrained network, PCA-whitening and Lw starts of the projection (no training)
  rank:     --configs "lr:queries:init[:margin],..." each trained --epochs epochs (triplet, no augmentation)
  classify: --configs "lr:freeze,..." each trained --epochs epochs (cross-entropy, new last layer)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepret.datasets import load_labelled, rankable, split
from deepret.extract import ExtractSettings, extract
from deepret.models import create_model, load
from deepret.separation import knn_accuracy, label_map, silhouette
from deepret.study import load_config
from deepret.study.steps import STEP_BY_ID, choose_network
from deepret.train import train_classify, train_config, train_rank
from deepret.train.whitening import matching_pairs
from deepret.whiten import fit_whitening


def score(net, val, size: int) -> dict:
    """Validation retrieval mAP, cosine silhouette and 5-NN accuracy of the labels, in descriptor space."""
    X = extract(net, val.paths, settings=ExtractSettings(size=size, precision="fp32", engine="torch"),
                desc="validation", progress=False).vectors
    return {"val_map": round(label_map(X, val.labels), 2), "silhouette": round(silhouette(X, val.labels), 4),
            "knn": round(knn_accuracy(X, val.labels), 2), "dim": int(X.shape[1])}


def emit(out: Path, row: dict) -> None:
    with open(out / "sweep.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print("| " + " | ".join(f"{k}={v}" for k, v in row.items()) + " |", flush=True)


def starts(cfg, train, val, out: Path) -> None:
    """The ranking steps' possible starts: no projection, PCA-w, Lw (full and reduced dimension)."""
    model = choose_network(cfg, STEP_BY_ID["1f"], {}).model
    net = create_model(model)
    emit(out, {"part": "start", "model": model, "init": "none", **score(net, val, cfg.size)})
    pooled = extract(net, train.paths, settings=ExtractSettings(size=cfg.rank.size, precision="fp32", engine="torch"),
                     desc="training descriptors", progress=False).vectors.astype(np.float64)
    for method, dim in (("pca", min(net.dim, len(train) - 1)), ("lw", cfg.proj), ("lw", net.dim)):
        w = fit_whitening(method, pooled, pairs=matching_pairs(train) if method == "lw" else None, dim=dim,
                          shrinkage=cfg.whiten_shrinkage)
        net.set_whitening(*w.as_linear(), method=method)
        emit(out, {"part": "start", "model": model, "init": method, "proj": dim, "size": cfg.rank.size,
                   **score(net, val, cfg.size)})
        net.whiten, net.meta["whitening"] = None, None


def rank(cfg, train, val, out: Path, configs: list[str], epochs: int) -> None:
    model = choose_network(cfg, STEP_BY_ID["1f"], {}).model
    usable, _ = rankable(train)
    for spec in configs:
        lr, queries, init, margin = (spec.split(":") + ["0.1"])[:4]
        proj = min(cfg.proj, create_model(model).dim if init == "lw" else len(usable) - 1)
        folder = out / f"rank-{model}-lr{lr}-q{queries}-{init}-p{proj}-m{margin}-s{cfg.rank.size}"
        t0 = time.time()
        last = folder / "last.pt"
        if not last.is_file():
            tc = train_config("rank", folder, epochs=epochs, batch_size=cfg.rank.batch_size, size=cfg.rank.size,
                              lr=float(lr), seed=cfg.seed, progress=False)
            train_rank(usable, model, tc, loss="triplet", margin=float(margin), negatives=cfg.negatives, pool_size=cfg.pool_size,
                       queries=int(queries), proj=proj, proj_init=init, proj_shrinkage=cfg.whiten_shrinkage)
        seconds = round(time.time() - t0, 1)
        for e in range(1, epochs + 1):
            emit(out, {"part": "rank", "model": model, "init": init, "proj": proj, "lr": float(lr),
                       "queries": int(queries), "margin": float(margin), "size": cfg.rank.size, "epochs": e,
                       "train_s_total": seconds,
                       **score(load(folder / f"epoch_{e:03d}.pt"), val, cfg.size)})


def classify(cfg, train, val, out: Path, configs: list[str], epochs: int) -> None:
    model = choose_network(cfg, STEP_BY_ID["1b"], {}).model
    emit(out, {"part": "classify", "model": model, "epochs": 0, **score(create_model(model), val, cfg.size)})
    for spec in configs:
        lr, freeze = spec.split(":")
        folder = out / f"classify-{model}-lr{lr}-f{freeze}"
        t0 = time.time()
        if not (folder / "last.pt").is_file():
            tc = train_config("classify", folder, epochs=epochs, batch_size=cfg.classify.batch_size,
                              size=cfg.classify.size, lr=float(lr), seed=cfg.seed, progress=False)
            train_classify(train, model, tc, freeze=int(freeze))
        seconds = round(time.time() - t0, 1)
        for e in range(1, epochs + 1):
            emit(out, {"part": "classify", "model": model, "lr": float(lr), "freeze": int(freeze), "epochs": e,
                       "train_s_total": seconds, **score(load(folder / f"epoch_{e:03d}.pt"), val, cfg.size)})


def table(out: Path) -> None:
    """The markdown table of every scored run in <out>/sweep.jsonl (the last record of each wins)."""
    rows: dict[tuple, dict] = {}
    for line in (out / "sweep.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = tuple((k, r.get(k)) for k in ("part", "init", "proj", "lr", "queries", "margin", "size", "freeze", "epochs"))
        rows[key] = r
    print("| part | network | start / budget | val mAP | silhouette | 5-NN % | dim | training s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        if r["part"] == "start":
            what = (f"no training, start {r['init']}"
                    + (f" {r['proj']}-d (fitted at {r['size']} px)" if r.get("proj") else ""))
        elif r["part"] == "rank":
            what = (f"{r['init']} start {r['proj']}-d, {r['epochs']} ep x {r['queries']} tuples, lr {r['lr']:g}, "
                    f"margin {r['margin']:g}, {r['size']} px")
        else:
            what = ("no training" if not r["epochs"] else
                    f"{r['epochs']} ep, lr {r['lr']:g}, freeze {r['freeze']}")
        print(f"| {r['part']} | {r['model']} | {what} | {r['val_map']:.2f} | {r['silhouette']:.3f} | {r['knn']:.1f} | "
              f"{r['dim']} | {r.get('train_s_total', '')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="study.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--part", choices=("starts", "rank", "classify", "all", "table"), default="all")
    ap.add_argument("--configs", default=None, help="rank: lr:queries:init,...; classify: lr:freeze,...")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rank-size", type=int, default=None, help="training image side of the ranking runs")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args()
    if args.part == "table":
        return table(args.out)
    cfg = load_config(args.config, progress=False, rank_size=args.rank_size)
    train, val = split(load_labelled(cfg.train), args.val_fraction, cfg.seed, by="image")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"training list {cfg.train}: {len(train)} training, {len(val)} validation images", flush=True)
    if args.part in ("starts", "all"):
        starts(cfg, train, val, args.out)
    if args.part in ("rank", "all"):
        rank(cfg, train, val, args.out, (args.configs or "5e-6:20:pca,5e-6:40:lw,2e-5:40:lw,1e-4:40:lw").split(","),
             args.epochs)
    if args.part in ("classify", "all"):
        classify(cfg, train, val, args.out, (args.configs or "1e-4:0,1e-5:0,1e-4:9,1e-5:9").split(","), args.epochs)


if __name__ == "__main__":
    main()
