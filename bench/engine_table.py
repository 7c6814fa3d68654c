"""Engines on both real benchmarks: every offline network x engine/precision, mAP change and min
cosine vs torch fp32, img/s.

    python bench/engine_table.py --json runs/engines.json
    python bench/engine_table.py --networks efficientnet_lite0-gem --variants torch:fp32,openvino:fp32 --size 256

Variants are `engine:precision` (torch:fp32, torch:bf16, openvino:fp32, openvino:int8); int8 is
calibrated on --calibration (landmarks-mini: not an evaluated photo). Each network at its evaluation
size (or --size) on oxford5k-mini (mAP) and rparis6k-mini (E/M/H), caches off, variants interleaved.
img/s counts the database and query images of the benchmark over the whole extraction.
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
from deepret.extract import ExtractSettings
from deepret.models import create_model
from deepret.models.backbones import OFFLINE_BACKBONES
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(name: str, variants: list[str], benches: dict, size: int | None, calibration: str) -> dict:
    net = create_model(name, weights="imagenet")
    row: dict = {"network": name, "size": size or net.default_size, "benchmarks": {}}
    for bname, bench in benches.items():
        ref, out = None, {}
        for variant in variants:
            engine, _, precision = variant.partition(":")
            settings = ExtractSettings(size=row["size"], engine=engine, precision=precision,
                                       calibration=calibration if precision == "int8" else None)
            opts = RunOptions(settings, use_cache=False, device="cpu", progress=False)
            t0 = time.perf_counter()
            features, _, _ = benchmark_features(net, bench, opts)
            seconds = time.perf_counter() - t0
            vecs = np.concatenate([features.db, features.queries])
            ref = vecs if ref is None else ref
            out[variant] = {"map": {k: round(float(r.map), 2) for k, r in evaluate_features(features, bench).items()},
                            "min_cosine": round(float((vecs * ref).sum(1).min()), 5),
                            "ips": round(len(vecs) / seconds, 2)}
        base = out[variants[0]]["map"]
        for r in out.values():
            r["map_change"] = {k: round(v - base[k], 2) for k, v in r["map"].items()}
        row["benchmarks"][bname] = out
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default=",".join(f"{b}-gem" for b in OFFLINE_BACKBONES))
    ap.add_argument("--variants", default="torch:fp32,openvino:fp32,openvino:int8",
                    help="engine:precision,... (the first is the reference)")
    ap.add_argument("--datasets", default="oxford5k-mini,rparis6k-mini")
    ap.add_argument("--size", type=int, default=None, help="default: each network's evaluation size")
    ap.add_argument("--calibration", default=str(DATA / "landmarks-mini"))
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    variants = args.variants.split(",")
    benches = {d: load_benchmark(d, args.root) for d in args.datasets.split(",")}
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0]}
    print(f"torch {torch.__version__}, {env['threads']} threads, 1-min load {env['loadavg_start']:.2f}\n")
    print(f"| network | size | variant | {' | '.join(f'{d} mAP | change | min cosine | img/s' for d in benches)} |")
    print("|---|---:|---|" + "---:|---:|---:|---:|" * len(benches))
    rows = []
    for name in args.networks.split(","):
        row = measure(name, variants, benches, args.size, args.calibration)
        rows.append(row)
        for v in variants:
            cells = []
            for d in benches:
                r = row["benchmarks"][d][v]
                cells.append(f"{'/'.join(f'{x:.2f}' for x in r['map'].values())} | "
                             f"{'/'.join(f'{x:+.2f}' for x in r['map_change'].values())} | {r['min_cosine']:.5f} | "
                             f"{r['ips']:.2f}")
            print(f"| {name} | {row['size']} | {v} | {' | '.join(cells)} |", flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
