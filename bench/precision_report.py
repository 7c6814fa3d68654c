"""Every precision on one device: extraction speed, oxford5k-mini mAP, training step time and a
short training run, written as one Markdown table (bench/gpu.sh runs it on CUDA).

    python bench/precision_report.py --device cuda --out runs/gpu

Rows, per precision P (fp32, bf16, fp16; those the device lacks are left out with the reason):
  extraction   deepret.extract at P against the classic cirtorch loop (bench/extract_speed.py),
               img/s and the ratio, same process, interleaved;
  mAP          oxford5k-mini, whole benchmark, at --size;
  train step   one `train rank`-style step (forward of --train-batch images at --train-size, triplet
               loss, backward, Adam) on a fixed batch, interleaved with the other precisions: seconds
               and the ratio to fp32, and the loss after --train-steps steps (the curves should agree);
  run          `train rank` for one short epoch through deepret.train (GradScaler for fp16 on CUDA),
               its mean loss and wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import DATA, bench_model, map_per_precision, timed

from deepret.augment import train_transform
from deepret.datasets import load_benchmark, load_labelled
from deepret.imageio import open_rgb
from deepret.models import create_model
from deepret.precision import autocast, prepare_input, prepare_model
from deepret.train import TrainConfig, train_rank
from deepret.train.losses import triplet_loss
from deepret.train.runner import freeze_batchnorm


def usable(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None."""
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "no bf16 on this GPU"
    return None


def train_steps(model: str, precisions: list[str], device: torch.device, size: int, batch: int, steps: int,
                repeat: int, data) -> dict:
    """Seconds per training step and the loss after `steps` steps, per precision, interleaved."""
    torch.manual_seed(0)
    base = create_model(model)
    tf = train_transform(size, base.meta["input"]["mean"], base.meta["input"]["std"], None)
    per_tuple = 3  # query, positive, one negative
    n = batch - batch % per_tuple or per_tuple
    x = torch.stack([tf(open_rgb(data.paths[i % len(data)])) for i in range(n)]).to(device)
    nets, opts, scalers = {}, {}, {}
    for p in precisions:
        nets[p] = prepare_model(create_model(model).train(), device, p)
        nets[p].load_state_dict(base.state_dict())
        freeze_batchnorm(nets[p])  # as deepret.train does
        opts[p] = torch.optim.Adam(nets[p].parameters(), lr=1e-6)
        scalers[p] = torch.amp.GradScaler(device.type, enabled=p == "fp16" and device.type == "cuda")

    def step(p):
        def run():
            with autocast(device, p):
                out = nets[p](prepare_input(x, p))
            loss = triplet_loss(out.view(n // per_tuple, per_tuple, -1), 0.1)
            opts[p].zero_grad()
            scalers[p].scale(loss).backward()
            scalers[p].step(opts[p])
            scalers[p].update()
            return loss.item()
        return run

    losses = {p: [step(p)() for _ in range(steps)] for p in precisions}  # also the warm-up
    times = {p: [] for p in precisions}
    for _ in range(repeat):
        for p in precisions:
            times[p].append(timed(step(p), device))
    best = {p: min(t) for p, t in times.items()}
    return {p: {"step_s": best[p], "ratio_to_fp32": best.get("fp32", best[p]) / best[p], "losses": losses[p]}
            for p in precisions}


def short_run(model: str, precision: str, device: torch.device, size: int, queries: int, data) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=Path(tmp) / "run", epochs=1, size=size, batch_size=2, lr=1e-6, device=str(device),
                          progress=False, precision=precision)
        t0 = time.perf_counter()
        train_rank(data, model, cfg, queries=queries, negatives=1, pool_size=min(len(data), 10))
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    loss = next(r["epoch_loss"] for r in records if "epoch_loss" in r)
    return {"wall_s": wall, "epoch_loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="efficientnet_lite0-gem")
    ap.add_argument("--size", type=int, default=512, help="extraction and evaluation size")
    ap.add_argument("--images", type=int, default=20, help="images of the speed comparison")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=362)
    ap.add_argument("--train-batch", type=int, default=12, help="images per training step (tuples of 3)")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--queries", type=int, default=8, help="tuples of the short training run")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--root", default=str(DATA))
    ap.add_argument("--parts", default="speed,map,steps,run", help="a subset to run (the others show '-')")
    ap.add_argument("--out", type=Path, required=True, help="folder for precision.md and precision.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("precision_report: no CUDA device here; use --device cpu to try the script")
    wanted = args.precisions.split(",")
    skipped = {p: why for p in wanted if (why := usable(p, device))}
    precisions = [p for p in wanted if p not in skipped]
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    bench = load_benchmark("oxford5k-mini", args.root)
    data = load_labelled(Path(args.root) / "landmarks-mini")
    speed_bench = load_benchmark("rparis6k-mini", args.root)  # photos all 1024 px: the peer does the same work
    paths = [speed_bench.image_path(i) for i in range(min(args.images, len(speed_bench.imlist)))]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"precision report on {name}, torch {torch.__version__}", flush=True)
    parts = set(args.parts.split(","))
    speed = bench_model(args.model, args.size, paths, precisions, device, args.workers, args.repeat) \
        if "speed" in parts else None
    maps = map_per_precision(args.model, args.size, precisions, bench, device) if "map" in parts else None
    steps = train_steps(args.model, precisions, device, args.train_size, args.train_batch, args.train_steps,
                        args.repeat, data) if "steps" in parts else None
    runs = {p: short_run(args.model, p, device, args.train_size, args.queries, data) for p in precisions} \
        if "run" in parts else None
    lines = [f"Device: {name}; torch {torch.__version__}; {args.model}; extraction at {args.size} px on "
             f"{len(paths)} rparis6k-mini images (best of {args.repeat}, interleaved); training at "
             f"{args.train_size} px, {args.train_batch} images per step.", "",
             "| precision | extract img/s | x cirtorch loop | oxford5k-mini mAP | min cosine to fp32 "
             "| train step s | step x fp32 | loss after steps | short run loss | short run s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in precisions:
        cells = [p]
        if speed:
            cells += [f"{speed['ips'][f'full:{p}']:.2f}", f"{speed['precisions'][p]['full_over_peer']:.2f}"]
        else:
            cells += ["-", "-"]
        if maps:
            cos = maps[p]["min_cosine_to_fp32"]
            cells += ["/".join(f"{v:.2f}" for v in maps[p]["map"].values()), "-" if cos is None else f"{cos:.4f}"]
        else:
            cells += ["-", "-"]
        cells += ([f"{steps[p]['step_s']:.3f}", f"{steps[p]['ratio_to_fp32']:.2f}", f"{steps[p]['losses'][-1]:.4f}"]
                  if steps else ["-"] * 3)
        cells += [f"{runs[p]['epoch_loss']:.4f}", f"{runs[p]['wall_s']:.1f}"] if runs else ["-"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    for p, why in skipped.items():
        lines.append(f"| {p} | {why} | | | | | | | | |")
    if speed:
        lines += ["", f"Classic loop: {speed['ips']['peer']:.2f} img/s; `auto` resolves to {speed['default']} here."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.md").write_text("\n".join(lines) + "\n")
    (args.out / "precision.json").write_text(json.dumps(
        {"device": name, "speed": speed, "map": maps, "train_steps": steps, "runs": runs, "skipped": skipped},
        indent=2, default=str) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {args.out / 'precision.md'}")


if __name__ == "__main__":
    main()
