"""Extraction speed per precision against the pure forward pass and the classic cirtorch loop.

    python bench/extract_speed.py --models efficientnet_lite0-gem:512,resnet50-gem:1024 --images 20 --repeat 3

For each `model:size`, on the first --images database photos of --dataset, in one process,
every candidate interleaved in each of --repeat rounds (after a warm-up), best time kept:
  peer        the classic loop of cirtorch's `extract_vectors`, re-implemented: a DataLoader of batch
              size 1 over the images (PIL decode, `thumbnail` to the longest side, ToTensor, Normalize),
              one image per forward, fp32, `net(x).squeeze()` into a D x N matrix;
  full:P      deepret.extract.extract() at precision P (header read, batching by shape, decoding in a
              thread or in --workers processes, forward, normalisation);
  forward:P   the network alone at precision P on the same batches, decoded beforehand;
  nothread    the full pipeline at the default precision with decoding in the main thread (as before
              the decoding thread), to show what overlapping decoding with the forward pass gives.
A precision may name its engine, `engine:precision` (torch:fp32, openvino:fp32, openvino:int8;
int8 calibrated on --calibration photos, landmarks-mini by default); a bare one runs on torch.
`default` is what `--precision auto` resolves to for this network on this machine.
With --map every precision also extracts the whole oxford5k-mini (54 images, 53 cropped queries)
at the same size and reports mAP and the smallest cosine to fp32 of its descriptors.
Ratios are the numbers to compare; img/s depend on the machine and its load (printed).

The default images are rparis6k-mini's, whose photos all have a longest side of 1024 px: both loops
then do the same work. deepret resizes every image to the longest side --size, also upwards, while
cirtorch's `thumbnail` only shrinks, so on oxford5k-mini (42 of 54 photos are small crops) deepret at
1024 px computes 2.2x the peer's pixels and the ratio measures that, not the pipeline.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import deepret.extract as E
from deepret.datasets import load_benchmark
from deepret.engines import compile_network
from deepret.extract import ExtractSettings, _collate, _Images, extract, plan_batches
from deepret.imageio import ImageSource, image_size
from deepret.models import create_model
from deepret.models.backbones import OFFLINE_BACKBONES
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features
from deepret.precision import resolve_precision
from deepret.runtime import default_workers

MAX_BATCH_PIXELS = inspect.signature(extract).parameters["max_batch_pixels"].default
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class ClassicImages(Dataset):
    """cirtorch's ImagesFromList: PIL RGB image, `thumbnail((size, size))` (keeps the aspect ratio,
    longest side `size`, antialiased), then the transform."""

    def __init__(self, paths, size: int, transform) -> None:
        self.paths, self.size, self.transform = paths, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        img.thumbnail((self.size, self.size), Image.LANCZOS)
        return self.transform(img)


def classic_extract(net, paths, size: int, device: torch.device, workers: int) -> torch.Tensor:
    """cirtorch's extract_vectors, single scale: one image per forward, fp32, D x N descriptors."""
    mean, std = net.meta["input"]["mean"], net.meta["input"]["std"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
    loader = DataLoader(ClassicImages(paths, size, tf), batch_size=1, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    net.to(device).eval()
    vecs = torch.zeros(net.dim, len(paths))
    with torch.no_grad():
        for i, x in enumerate(loader):
            vecs[:, i] = net(x.to(device)).cpu().data.squeeze()
    return vecs


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _plain_loader(dataset, batches, workers, pin):
    """Decoding in the main thread, batch after batch (the loader before the decoding thread)."""
    if workers:
        yield from E.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                                pin_memory=pin, prefetch_factor=4)
        return
    for batch in batches:
        yield _collate([dataset[key] for key in batch])


def bench_model(name: str, size: int, paths, precisions: list[str], device: torch.device, workers: int,
                repeat: int) -> dict:
    torch.manual_seed(0)
    weights = "imagenet" if parse_backbone(name) in OFFLINE_BACKBONES else "random"
    net = create_model(name, weights=weights).eval()
    peer_net = copy.deepcopy(net)
    default = resolve_precision("auto", net.meta["backbone"], device)
    settings = {p: variant_settings(size, p) for p in precisions}
    dataset = _Images(ImageSource(paths), net.meta["input"]["mean"], net.meta["input"]["std"])
    batches = plan_batches([image_size(p) for p in paths], size, 32, MAX_BATCH_PIXELS, fixed=net.input_size)
    xs = [x.to(device) for _, x, _ in (_collate([dataset[k] for k in b]) for b in batches)]

    def full(p):
        return lambda: extract(net, paths, settings=settings[p], device=device, workers=workers, progress=False).vectors

    engines: dict = {}

    def forward(p):
        @torch.inference_mode()
        def run():
            if p not in engines:  # compiled once, outside the timed rounds
                s = settings[p]
                engines[p] = compile_network(net, s.engine, s.precision, device, calibration=CALIBRATION["photos"],
                                             calibration_size=size)
            return [engines[p](x) for x in xs]
        return run

    def nothread():
        E._loader, saved = _plain_loader, E._loader
        try:
            return extract(net, paths, settings=settings.get(default, variant_settings(size, default)), device=device,
                           workers=workers, progress=False).vectors
        finally:
            E._loader = saved

    candidates = {"peer": lambda: classic_extract(peer_net, paths, size, device, workers), "nothread": nothread}
    for p in precisions:
        candidates[f"full:{p}"] = full(p)
        candidates[f"forward:{p}"] = forward(p)
    outputs = {k: fn() for k, fn in candidates.items()}  # warm-up, and the descriptors to compare
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeat):  # interleaved, so slow drifts of the machine load hit all alike
        for k, fn in candidates.items():
            times[k].append(timed(fn, device))
    best = {k: min(v) for k, v in times.items()}
    ref = next((outputs[f"full:{k}"] for k in ("fp32", "torch:fp32") if f"full:{k}" in outputs), None)
    peer = outputs["peer"].T.numpy()
    row = {"model": name, "weights": weights, "size": size, "images": len(paths), "default": default,
           "batches": len(batches), "ips": {k: len(paths) / v for k, v in best.items()}, "seconds": times,
           "precisions": {}}
    for p in precisions:
        got = outputs[f"full:{p}"]
        row["precisions"][p] = {
            "full_over_peer": best["peer"] / best[f"full:{p}"],
            "full_over_forward": best[f"forward:{p}"] / best[f"full:{p}"],
            "min_cosine_to_fp32": float((got * ref).sum(1).min()) if ref is not None else None,
            "min_cosine_to_peer": float((got * peer).sum(1).min())}
    row["default_over_nothread"] = best["nothread"] / best[f"full:{default}"] if default in precisions else None
    med = {k: float(np.median(v)) for k, v in times.items()}  # steadier than the best on a noisy machine
    row["median_ratios"] = {p: {"full_over_peer": med["peer"] / med[f"full:{p}"],
                                "full_over_forward": med[f"forward:{p}"] / med[f"full:{p}"]} for p in precisions}
    return row


def parse_backbone(name: str) -> str:
    return name.rpartition("-")[0]


CALIBRATION = {"photos": None}  # int8 calibration folder (--calibration)


def variant_settings(size: int, variant: str) -> ExtractSettings:
    """`engine:precision` (or a bare precision: torch) as extraction settings."""
    engine, _, precision = variant.rpartition(":")
    return ExtractSettings(size=size, precision=precision, engine=engine or "torch",
                           calibration=str(CALIBRATION["photos"][0]) if precision == "int8" else None)


def map_per_precision(name: str, size: int, precisions: list[str], bench, device: torch.device) -> dict:
    """oxford5k-mini mAP of each precision (whole benchmark), and min cosine to fp32."""
    torch.manual_seed(0)
    weights = "imagenet" if parse_backbone(name) in OFFLINE_BACKBONES else "random"
    net = create_model(name, weights=weights)
    out, ref = {}, None
    for p in precisions:
        opts = RunOptions(variant_settings(size, p), use_cache=False, device=str(device), progress=False)
        features, _, _ = benchmark_features(net, bench, opts)
        vecs = np.concatenate([features.db, features.queries])
        ref = vecs if p in ("fp32", "torch:fp32") else ref
        out[p] = {"map": {k: round(float(r.map), 2) for k, r in evaluate_features(features, bench).items()},
                  "min_cosine_to_fp32": float((vecs * ref).sum(1).min()) if ref is not None else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0-gem:512,resnet50-gem:1024", help="name:size,...")
    ap.add_argument("--images", type=int, default=20, help="first N database images of --dataset")
    ap.add_argument("--dataset", default="rparis6k-mini", help="benchmark whose photos are timed (default: "
                                                              "rparis6k-mini, all 1024 px, see above)")
    ap.add_argument("--precisions", default=None, help="default: fp32,bf16 on a CPU, fp32,bf16,fp16 on CUDA")
    ap.add_argument("--repeat", type=int, default=3, help="take the best of N interleaved rounds (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=default_workers(), help="decoding processes (both loops)")
    ap.add_argument("--map", action="store_true", help="also oxford5k-mini mAP per precision (whole benchmark)")
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--calibration", default=str(DATA / "landmarks-mini"), help="int8 calibration photos")
    ap.add_argument("--json", help="save the results to this path")
    args = ap.parse_args()
    device = torch.device(args.device)
    CALIBRATION["photos"] = [args.calibration]
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16,openvino:fp32,openvino:int8")).split(",")
    bench = load_benchmark("oxford5k-mini", args.root)  # --map's benchmark (auto's rule)
    timed_bench = bench if args.dataset == "oxford5k-mini" else load_benchmark(args.dataset, args.root)
    paths = [timed_bench.image_path(i) for i in range(min(args.images, len(timed_bench.imlist)))]
    env = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "workers": args.workers,
           "repeat": args.repeat, "python": platform.python_version(), "cpus": os.cpu_count(),
           "loadavg_1min_start": os.getloadavg()[0], "dataset": args.dataset}
    print(f"{len(paths)} {args.dataset} images, device {env['gpu'] or device}, torch {torch.__version__}, "
          f"{env['threads']} intra-op threads, {args.workers} workers, best of {args.repeat}\n", flush=True)
    rows = []
    for spec in args.models.split(","):
        name, _, size = spec.partition(":")
        row = bench_model(name, int(size or 1024), paths, precisions, device, args.workers, args.repeat)
        if args.map:
            for p, m in map_per_precision(name, row["size"], precisions, bench, device).items():
                row["precisions"][p].update({"map": m["map"], "map_min_cosine_to_fp32": m["min_cosine_to_fp32"]})
        rows.append(row)
    env["loadavg_1min_end"] = os.getloadavg()[0]  # includes this run's own threads
    print(f"1-min load average {env['loadavg_1min_start']:.2f} at start, {env['loadavg_1min_end']:.2f} at end "
          f"({env['cpus']} CPUs)\n")
    print("| network | size | precision | full img/s | pure-forward img/s | peer img/s | full / peer "
          "| full / forward | min cosine to fp32 | oxford5k-mini mAP |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for p, q in r["precisions"].items():
            tag = f"{p} (default)" if p == r["default"] else p
            cos = "-" if q["min_cosine_to_fp32"] is None else f"{q['min_cosine_to_fp32']:.4f}"
            m = "/".join(f"{v:.2f}" for v in q["map"].values()) if "map" in q else "-"
            print(f"| {r['model']} ({r['weights']}) | {r['size']} | {tag} | {r['ips'][f'full:{p}']:.2f} | "
                  f"{r['ips'][f'forward:{p}']:.2f} | {r['ips']['peer']:.2f} | {q['full_over_peer']:.2f} | "
                  f"{q['full_over_forward']:.2f} | {cos} | {m} |")
    print()
    for r in rows:
        gain = r["default_over_nothread"]
        print(f"{r['model']} {r['size']}: {r['batches']} batches; default precision {r['default']}; decoding thread "
              f"vs main-thread decoding {'-' if gain is None else f'{gain:.2f}x'}; min cosine peer vs fp32 "
              f"{r['precisions'].get('fp32', {}).get('min_cosine_to_peer', float('nan')):.4f}")
        for p, q in r["median_ratios"].items():
            print(f"  {p}, medians of the rounds: full / peer {q['full_over_peer']:.2f}, "
                  f"full / forward {q['full_over_forward']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
