"""Which reduced precision each backbone tolerates: oxford5k-mini mAP in fp32, bf16 and fp16.

    python bench/precision_table.py --json runs/precision.json
    python bench/precision_table.py --dataset rparis6k-mini --precisions fp32,bf16   # the second benchmark

For every registered backbone (`<backbone>-gem`) the whole oxford5k-mini benchmark (54 database
images, 53 cropped queries) is extracted once per precision in one process, precisions interleaved
per backbone, and evaluated. A precision is accepted for `auto` (deepret.precision.REDUCED_OK) when
its mAP is within 0.3 points of fp32. EfficientNet-Lite0/1/2 run with their real ImageNet weights;
AlexNet, VGG16 and the ResNets with random weights (seed 0): their ImageNet weights cannot be
downloaded here, so their mAP only shows how far the precision moves a ranking, not quality.
`time ratio` is fp32's extraction time over this precision's (same process, same images).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from deepret.datasets import load_benchmark
from deepret.extract import ExtractSettings, extract
from deepret.models import create_model
from deepret.models.backbones import BACKBONES, OFFLINE_BACKBONES, default_size
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features
from deepret.precision import MAP_TOLERANCE, cpu_has_fast

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(backbone: str, size: int, precisions: list[str], bench, device: str) -> dict:
    torch.manual_seed(0)
    weights = "imagenet" if backbone in OFFLINE_BACKBONES else "random"
    net = create_model(f"{backbone}-gem", weights=weights)
    row: dict = {"backbone": backbone, "weights": weights, "size": size, "precisions": {}}
    for precision in precisions:  # warm-up: allocator, kernels of the first shapes
        extract(net, [bench.image_path(i) for i in range(4)], settings=ExtractSettings(size=size, precision=precision),
                device=device, progress=False)
    ref = None
    for precision in precisions:
        opts = RunOptions(ExtractSettings(size=size, precision=precision), use_cache=False, device=device,
                          progress=False)
        t0 = time.perf_counter()
        features, _, _ = benchmark_features(net, bench, opts)
        seconds = time.perf_counter() - t0
        results = evaluate_features(features, bench)
        vecs = np.concatenate([features.db, features.queries])
        ref = vecs if ref is None else ref
        row["precisions"][precision] = {
            "map": {p: round(float(r.map), 2) for p, r in results.items()}, "seconds": round(seconds, 2),
            "min_cosine_to_fp32": round(float((vecs * ref).sum(1).min()), 5)}
    fp32 = row["precisions"]["fp32"]
    for r in row["precisions"].values():
        r["time_ratio"] = round(fp32["seconds"] / r["seconds"], 2)
        r["max_map_change"] = round(max(abs(r["map"][p] - fp32["map"][p]) for p in fp32["map"]), 2)
        r["accepted"] = r["max_map_change"] <= MAP_TOLERANCE
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--lite-size", type=int, default=None,
                    help="image size of the EfficientNet-Lite rows (default: each one's evaluation size)")
    ap.add_argument("--size", type=int, default=512, help="image size of the random-weight rows")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--dataset", default="oxford5k-mini")
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bench = load_benchmark(args.dataset, args.root)
    precisions = args.precisions.split(",")
    env = {"dataset": args.dataset, "device": args.device, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0],
           "cpu_fast": {p: cpu_has_fast(p) for p in ("bf16", "fp16")}}
    print(f"{args.dataset}, device {args.device}, torch {torch.__version__}, hardware bf16/fp16 on this CPU: "
          f"{env['cpu_fast']}, 1-min load {env['loadavg_start']:.2f}\n")
    print("| backbone | weights | size | precision | mAP | change | min cosine | time ratio | accepted |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    rows = []
    for backbone in args.backbones.split(","):
        size = (args.lite_size or default_size(backbone)) if backbone in OFFLINE_BACKBONES else args.size
        row = measure(backbone, size, precisions, bench, args.device)
        rows.append(row)
        for precision, r in row["precisions"].items():
            maps = "/".join(f"{v:.2f}" for v in r["map"].values())
            print(f"| {backbone} | {row['weights']} | {size} | {precision} | {maps} | {r['max_map_change']:.2f} | "
                  f"{r['min_cosine_to_fp32']:.4f} | {r['time_ratio']:.2f} | {'yes' if r['accepted'] else 'no'} |",
                  flush=True)
        if args.json:  # after every backbone, so a long run keeps what it has measured
            env["loadavg_end"] = os.getloadavg()[0]
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print("\nREDUCED_OK = {")
    for row in rows:
        ok = tuple(p for p in ("bf16", "fp16") if p in row["precisions"] and row["precisions"][p]["accepted"])
        print(f"    {row['backbone']!r}: {ok!r},")
    print("}")


if __name__ == "__main__":
    main()
