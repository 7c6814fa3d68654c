"""Evaluation size x model sweep on both real benchmarks: mAP and images/s side by side.

    python bench/size_sweep.py --sizes 384,512,768,1024 \
        --models efficientnet_lite0-gem,efficientnet_lite1-gem,efficientnet_lite2-gem --json sweep.json

For every size and model (sizes outer, models inner, so slow drifts of the machine load hit all
models of a size alike) the database and the cropped queries of oxford5k-mini (old protocol) and
rparis6k-mini (Medium, Hard) are extracted single scale with `deepret.extract.extract` (no feature
cache) and evaluated. images/s counts every image of both benchmarks (database + queries) over the
extraction time of both; `x lite0` is that speed over the first model's at the same size, measured
in the same process. The chosen default per model is the size with the best mean of the three mAPs;
the default model is the most accurate one (mean mAP at its default size) unless it extracts under
--min-ips images/s there, then the next most accurate (the fastest when none reaches --min-ips).
On a machine shared with other jobs the measured images/s say little; --reference-ips R (the first
model's images/s on an idle machine, at the size the models' defaults fall on) judges each model by
R times its `x lite0` ratio at its default size instead, the ratio measured in this process.
Results are appended to --json as they come, so an interrupted sweep goes on where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from deepret.datasets import load_benchmark
from deepret.evaluate import evaluate
from deepret.extract import ExtractSettings, extract
from deepret.models import create_model

BENCHMARKS = ("oxford5k-mini", "rparis6k-mini")
COLUMNS = (("oxford5k-mini", "old"), ("rparis6k-mini", "medium"), ("rparis6k-mini", "hard"))


def run_one(net, bench, size: int) -> tuple[dict[str, float], int, float]:
    """mAP per protocol, images extracted and seconds spent extracting them."""
    settings = ExtractSettings(size=size)
    db_paths = [bench.image_path(i) for i in range(len(bench.imlist))]
    q_paths = [bench.query_path(q) for q in range(len(bench.qimlist))]
    bbxs = [bench.query_bbx(q) for q in range(len(bench.qimlist))]
    t0 = time.perf_counter()
    db = extract(net, db_paths, settings=settings, device="cpu", progress=False).vectors
    queries = extract(net, q_paths, bbxs, settings=settings, device="cpu", progress=False).vectors
    seconds = time.perf_counter() - t0
    results = evaluate(db @ queries.T, bench.gnd)
    return {p: round(float(r.map), 2) for p, r in results.items()}, len(db_paths) + len(q_paths), seconds


def choose(rows: list[dict], models: list[str], min_ips: float, reference_ips: float | None = None) -> dict:
    """Default size per model (best mean mAP) and the default model by the rule in the docstring;
    with `reference_ips` a model's speed is that times its `speed_ratio` (rows need it then)."""
    per_model = {}
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["mean_map"])
        ips = best["ips"] if reference_ips is None else round(reference_ips * best["speed_ratio"], 2)
        per_model[m] = {"size": best["size"], "mean_map": best["mean_map"], "ips": ips}
    ranked = sorted(per_model, key=lambda m: -per_model[m]["mean_map"])
    fastest = max(per_model, key=lambda m: per_model[m]["ips"], default=None)
    default = next((m for m in ranked if per_model[m]["ips"] >= min_ips), fastest)  # none fast enough: the fastest
    return {"per_model": per_model, "default_model": default, "min_ips": min_ips, "reference_ips": reference_ips}


def mean_map(maps: dict[str, dict[str, float]]) -> float:
    return round(sum(maps[b][p] for b, p in COLUMNS) / len(COLUMNS), 2)


def table(rows: list[dict], models: list[str]) -> str:
    lines = ["| model | size | oxford5k-mini old | rparis6k-mini Medium | rparis6k-mini Hard | mean | img/s | x lite0 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (models.index(r["model"]), r["size"])):
        maps = [f"{r['map'][b][p]:.2f}" for b, p in COLUMNS]
        lines.append(f"| {r['model']} | {r['size']} | {' | '.join(maps)} | {r['mean_map']:.2f} | "
                     f"{r['ips']:.1f} | {r['speed_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="384,512,768,1024")
    ap.add_argument("--models", default="efficientnet_lite0-gem,efficientnet_lite1-gem,efficientnet_lite2-gem")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--min-ips", type=float, default=5.0, help="slowest acceptable default (images/s)")
    ap.add_argument("--reference-ips", type=float, default=None,
                    help="the first model's images/s at its default size on an idle machine: judge speed by ratio")
    ap.add_argument("--json", type=Path, default=Path("size_sweep.json"), help="results (appended, resumable)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    models = args.models.split(",")
    benches = {name: load_benchmark(name, args.root) for name in BENCHMARKS}
    state = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": [], "env": []}
    done = {(r["model"], r["size"]) for r in state["rows"]}
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "cpus": os.cpu_count(), "loadavg_1min_start": os.getloadavg()[0], "started": time.strftime("%FT%TZ", time.gmtime())}
    for bench in benches.values():  # page cache: the first model timed must not pay for disk reads
        for name in (*bench.imlist, *bench.qimlist):
            (bench.jpg_dir / f"{name}.jpg").read_bytes()
    nets = {}
    for size in sizes:
        for model in models:
            if (model, size) in done:
                continue
            net = nets.setdefault(model, create_model(model, weights="imagenet").eval())
            warm = benches[BENCHMARKS[0]]  # warm-up at this size: allocator, kernels
            extract(net, [warm.image_path(i) for i in range(4)], settings=ExtractSettings(size=size),
                    device="cpu", progress=False)
            maps, images, seconds = {}, 0, 0.0
            for name, bench in benches.items():
                m, n, s = run_one(net, bench, size)
                maps[name], images, seconds = m, images + n, seconds + s
            row = {"model": model, "size": size, "map": maps, "mean_map": mean_map(maps), "images": images,
                   "seconds": round(seconds, 2), "ips": round(images / seconds, 2), "loadavg_1min": os.getloadavg()[0]}
            state["rows"].append(row)
            args.json.write_text(json.dumps(state, indent=2) + "\n")
            print(f"{model} {size}: {maps} mean {row['mean_map']} {row['ips']} img/s", flush=True)
    env["loadavg_1min_end"] = os.getloadavg()[0]
    state["env"].append(env)
    rows = state["rows"]
    base = {r["size"]: r["ips"] for r in rows if r["model"] == models[0]}
    for r in rows:
        r["speed_ratio"] = round(r["ips"] / base[r["size"]], 2) if r["size"] in base else float("nan")
    state["choice"] = choose(rows, models, args.min_ips, args.reference_ips)
    args.json.write_text(json.dumps(state, indent=2) + "\n")
    print()
    print(table(rows, models))
    print()
    for m, c in state["choice"]["per_model"].items():
        how = "img/s" if args.reference_ips is None else f"img/s = {args.reference_ips:g} x its x lite0"
        print(f"{m}: default size {c['size']} (mean mAP {c['mean_map']:.2f}, {c['ips']:.1f} {how})")
    print(f"default model (most accurate with >= {args.min_ips:g} img/s at its size): {state['choice']['default_model']}")


if __name__ == "__main__":
    main()
