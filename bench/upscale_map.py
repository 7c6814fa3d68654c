"""mAP with and without enlarging images smaller than the evaluation size (`ExtractSettings.upscale`).

    python bench/upscale_map.py --model efficientnet_lite2-gem --sizes 384,1024 --json upscale_map.json

By default (`upscale=False`, as cirtorch's `thumbnail`) an image or cropped query smaller than
--size keeps its own size; `--upscale` enlarges it to the longest side --size. Both are measured
here on oxford5k-mini (42 of 54 photos are crops) and rparis6k-mini (full-size photos, cropped
queries), fp32, whole benchmarks, no feature cache.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepret.datasets import load_benchmark
from deepret.extract import ExtractSettings
from deepret.models import create_model
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite2-gem")
    ap.add_argument("--sizes", default="384,1024")
    ap.add_argument("--datasets", default="oxford5k-mini,rparis6k-mini")
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    net = create_model(args.model)
    rows = []
    print("| dataset | size | enlarged (--upscale) | kept (default) |\n|---|---:|---:|---:|")
    for name in args.datasets.split(","):
        bench = load_benchmark(name, args.root)
        for size in map(int, args.sizes.split(",")):
            row = {"dataset": name, "size": size}
            for key, upscale in (("enlarged", True), ("kept", False)):
                opts = RunOptions(ExtractSettings(size=size, precision="fp32", upscale=upscale), use_cache=False,
                                  progress=False)
                features, _, _ = benchmark_features(net, bench, opts)
                row[key] = {p: round(float(r.map), 2) for p, r in evaluate_features(features, bench).items()}
            rows.append(row)
            fmt = lambda m: " / ".join(f"{v:.2f}" for v in m.values())  # noqa: E731
            print(f"| {name} | {size} | {fmt(row['enlarged'])} | {fmt(row['kept'])} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
