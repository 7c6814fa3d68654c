"""mAP of each re-ranking method and combination on both real benchmarks, against plain search.

    python bench/rerank_map.py --json rerank_map.json

The default model at its default size (or --model / --size) describes oxford5k-mini (old protocol)
and rparis6k-mini (Revisited Paris, Easy/Medium/Hard) once (feature cache); every spec of --specs
then re-ranks the same descriptors with `deepret.pipeline.evaluate_features(rerank=spec)`, the code
path of `deepret eval --rerank SPEC`. Prints a markdown table, mAP in %, and the change against
plain search in points.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepret.datasets import load_benchmark
from deepret.extract import ExtractSettings
from deepret.models import DEFAULT_MODEL, get_model
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the papers' defaults, then the same methods with small n / k, and the usual combinations
SPECS = ("none", "qe", "alpha-qe", "dba", "alpha-dba", "diffusion",
         "qe:n=2", "alpha-qe:n=3", "dba:n=2", "alpha-dba:n=3", "diffusion:k=10",
         "dba+alpha-qe", "alpha-dba:n=3+alpha-qe:n=3", "dba:n=2+diffusion:k=10")
COLUMNS = (("oxford5k-mini", "old"), ("rparis6k-mini", "easy"), ("rparis6k-mini", "medium"),
           ("rparis6k-mini", "hard"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--size", type=int, default=None, help="default: the model's evaluation size")
    ap.add_argument("--specs", default=";".join(SPECS), help="';'-separated re-ranking specs ('none': plain)")
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    net = get_model(args.model)
    specs = args.specs.split(";")
    rows: dict[str, dict[str, float]] = {s: {} for s in specs}
    for name in dict.fromkeys(b for b, _ in COLUMNS):
        bench = load_benchmark(name, args.root)
        features, _, _ = benchmark_features(net, bench, RunOptions(ExtractSettings(size=args.size), progress=False))
        for spec in specs:
            results = evaluate_features(features, bench, rerank=None if spec == "none" else spec)
            for protocol, result in results.items():
                rows[spec][f"{name} {protocol}"] = round(float(result.map), 2)
    cols = [f"{b} {p}" for b, p in COLUMNS]
    print(f"{args.model}, size {args.size or net.meta['input']['default_size']}\n")
    print("| re-ranking | " + " | ".join(cols) + " | mean | vs none |")
    print("|---|" + "---:|" * (len(cols) + 2))
    base = sum(rows[specs[0]][c] for c in cols) / len(cols)
    for spec in specs:
        mean = sum(rows[spec][c] for c in cols) / len(cols)
        print(f"| `{spec}` | " + " | ".join(f"{rows[spec][c]:.2f}" for c in cols) + f" | {mean:.2f} | {mean - base:+.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "size": args.size, "map": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
