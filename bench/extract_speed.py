"""Extraction speed: the full `extract` pipeline against the pure forward pass and a one-by-one loop.

    python bench/extract_speed.py --sizes 512,1024 --repeat 2

Model `efficientnet_lite0-gem` (ImageNet weights, offline) on the 54 database images of
oxford5k-mini (`--root`, default ../shared/data next to the repo). In the same run, per size:
  full       deepret.extract.extract(): header read, batching by shape, DataLoader workers decoding,
             forward, normalisation (single scale, no flip);
  forward    net(x) only, on the same batches (plan_batches + _Images + _collate, as extract uses
             them) decoded beforehand;
  one-by-one decode + forward of each image alone at the same resized shape, no batching, no workers;
  untuned    the full pipeline with the previous defaults: glibc's malloc settings, 2 workers
             (deepret.runtime.tune_allocator is off for it, on for the others).
Every figure is the best of --repeat runs after a warm-up; the ratios are the numbers to compare
across machines, the img/s depend on the machine and on its load.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from pathlib import Path

import torch

from deepret.datasets.revisitop import load_benchmark
from deepret.extract import ExtractSettings, _collate, _Images, extract, plan_batches
from deepret.runtime import default_workers, tune_allocator
from deepret.imageio import image_size
from deepret.models.network import create_model
from deepret.models.registry import DEFAULT_MODEL

MAX_BATCH_PIXELS = inspect.signature(extract).parameters["max_batch_pixels"].default


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_size(net, paths, size: int, device: torch.device, workers: int, repeat: int) -> dict:
    settings = ExtractSettings(size=size)
    dataset = _Images(paths, [None] * len(paths), net.meta["input"]["mean"], net.meta["input"]["std"])
    sizes = [image_size(p) for p in paths]
    batches = plan_batches(sizes, settings.size, settings.round_to, MAX_BATCH_PIXELS, fixed=net.input_size)
    t0 = time.perf_counter()
    decoded = [_collate([dataset[key] for key in batch]) for batch in batches]
    decode_s = time.perf_counter() - t0  # serial decode + resize + normalise, main process
    xs = [x.to(device) for _, x in decoded]
    keys = [key for batch in batches for key in batch]

    def full():
        return extract(net, paths, settings=settings, device=device, workers=workers, progress=False)

    def full_untuned():
        """The previous defaults: glibc's malloc settings and 2 decoding workers."""
        os.environ["DEEPRET_MALLOC_TUNING"] = "0"
        tune_allocator(False)
        try:
            return extract(net, paths, settings=settings, device=device, workers=2, progress=False)
        finally:
            del os.environ["DEEPRET_MALLOC_TUNING"]
            tune_allocator(True)

    @torch.inference_mode()
    def forward():
        return [net(x) for x in xs]

    @torch.inference_mode()
    def one_by_one():
        for key in keys:
            net(dataset[key][1].unsqueeze(0).to(device))

    # warm-up (allocator, kernels for each shape, worker start) and a check that (a) is what extract computes
    ref = full()
    out = torch.cat(forward()).cpu()
    order = [i for idx, _ in decoded for i in idx]
    max_diff = float((out - torch.from_numpy(ref[order])).abs().max())
    times = {"full": [], "forward": [], "one_by_one": [], "untuned": []}
    for _ in range(repeat):  # interleaved, so slow drifts of the machine load hit all alike
        for name, fn in (("full", full), ("forward", forward), ("one_by_one", one_by_one), ("untuned", full_untuned)):
            times[name].append(timed(fn, device))
    n = len(paths)
    best = {k: min(v) for k, v in times.items()}
    return {"size": size, "images": n, "batches": len(batches), "max_batch": max(len(b) for b in batches),
            "full_ips": n / best["full"], "forward_ips": n / best["forward"],
            "one_by_one_ips": n / best["one_by_one"], "serial_decode_ips": n / decode_s,
            "untuned_ips": n / best["untuned"], "full_over_untuned": best["untuned"] / best["full"],
            "full_over_forward": best["forward"] / best["full"],
            "full_over_one_by_one": best["one_by_one"] / best["full"],
            "seconds": times, "max_abs_diff_forward_vs_extract": max_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--repeat", type=int, default=2, help="take the best of N runs (default 2)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workers", type=int, default=default_workers(), help="DataLoader workers of the full run")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--json", help="save the results to this path")
    args = ap.parse_args()
    device = torch.device(args.device)
    bench = load_benchmark("oxford5k-mini", args.root)
    paths = [bench.image_path(i) for i in range(len(bench.imlist))]
    net = create_model(DEFAULT_MODEL).to(device).eval()
    env = {"model": DEFAULT_MODEL, "device": str(device), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "workers": args.workers, "repeat": args.repeat,
           "python": platform.python_version(), "loadavg_1min_start": os.getloadavg()[0],
           "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(f"{DEFAULT_MODEL} on {len(paths)} oxford5k-mini images, device {device}, torch {torch.__version__}, "
          f"{env['threads']} intra-op threads, {args.workers} workers, best of {args.repeat}, "
          f"glibc malloc env {env['malloc_env'] or 'default'}\n")
    rows = [bench_size(net, paths, int(s), device, args.workers, args.repeat) for s in args.sizes.split(",")]
    env["loadavg_1min_end"] = os.getloadavg()[0]  # includes this run's own threads
    print(f"1-min load average {env['loadavg_1min_start']:.2f} at start, {env['loadavg_1min_end']:.2f} at end "
          f"({os.cpu_count()} CPUs)\n")
    print("| size | images | full img/s | pure-forward img/s | one-by-one img/s | untuned full img/s "
          "| full/forward | full/one-by-one | full/untuned |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['images']} | {r['full_ips']:.1f} | {r['forward_ips']:.1f} | "
              f"{r['one_by_one_ips']:.1f} | {r['untuned_ips']:.1f} | {r['full_over_forward']:.2f} | "
              f"{r['full_over_one_by_one']:.2f} | {r['full_over_untuned']:.2f} |")
    print()
    for r in rows:
        print(f"size {r['size']}: {r['batches']} batches (largest {r['max_batch']}), serial decode "
              f"{r['serial_decode_ips']:.1f} img/s, forward vs extract max |diff| "
              f"{r['max_abs_diff_forward_vs_extract']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
