"""Robustness study: mAP and per-query AP when the queries (cropped to their bounding boxes unless
`RunOptions.crop_queries` is off, as with `--no-crop`) are transformed — flipped, rotated,
downscaled, JPEG-compressed — with single-scale descriptors and with multi-scale + flip-averaged
ones. Database descriptors come from the feature cache; each transformed query set is made once, in
memory, and extracted under both descriptor settings. The report is a JSON record: what `robustness_study` returns is what
robustness.json reads back (lists, not tuples).
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from deepret.datasets import Benchmark
from deepret.errors import DeepretError
from deepret.evaluate import evaluate, results_to_json
from deepret.extract import ExtractSettings, extract
from deepret.fileio import atomic_write_text
from deepret.imageio import open_rgb
from deepret.models import RetrievalNet
from deepret.pipeline import RunOptions, benchmark_features
from deepret.search import similarities
from deepret.viz.png import save_png

MULTI_SCALES = (1.0, 0.707, 1.414)


def _rotate(degrees: float) -> Callable[[Image.Image], Image.Image]:
    """Rotation about the centre, same size, corners filled black (90/180: exact transposes)."""
    exact = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180}
    if degrees in exact:
        return lambda im: im.transpose(exact[degrees])
    return lambda im: im.rotate(degrees, resample=Image.BILINEAR)


def _downscale(factor: int) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.reduce(factor)


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def encode(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    return encode


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda im: im,
    "flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotate 5": _rotate(5), "rotate 10": _rotate(10), "rotate 90": _rotate(90), "rotate 180": _rotate(180),
    "downscale 1/2": _downscale(2), "downscale 1/4": _downscale(4), "downscale 1/8": _downscale(8),
    "jpeg 90": _jpeg(90), "jpeg 50": _jpeg(50), "jpeg 10": _jpeg(10),
}


def parse_transforms(text: str | None) -> list[str]:
    """'flip,rotate 90,jpeg 10' -> names (all when None); DeepretError naming the valid ones."""
    if not text:
        return list(TRANSFORMS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown or not names:
        raise DeepretError(f"unknown query transform(s) {unknown or text!r}: choose from {', '.join(TRANSFORMS)}")
    return names


def conditions(settings: ExtractSettings) -> dict[str, ExtractSettings]:
    """The two descriptor settings compared: single scale, and scales 1/0.707/1.414 with flip averaging."""
    return {"single-scale": replace(settings, scales=(1.0,), flip=False),
            "multi-scale + flip": replace(settings, scales=MULTI_SCALES, flip=True)}


def transformed_images(bench: Benchmark, transform: str, opts: RunOptions) -> list[Image.Image]:
    """The queries (cropped unless opts.crop_queries is off) after `transform`, in memory."""
    boxes = [bench.query_bbx(q) if opts.crop_queries else None for q in range(len(bench.qimlist))]
    return [TRANSFORMS[transform](open_rgb(bench.query_path(q), box)) for q, box in enumerate(boxes)]


def transformed_queries(net: RetrievalNet, images: list[Image.Image], transform: str, settings: ExtractSettings,
                        opts: RunOptions) -> np.ndarray:
    """Descriptors of the `transform`ed queries `images` (transformed_images) under `settings`."""
    return extract(net, images, settings=settings, device=opts.device, workers=opts.workers,
                   desc=f"queries: {transform}", progress=False).vectors


def robustness_study(net: RetrievalNet, bench: Benchmark, opts: RunOptions,
                     transforms: list[str] | None = None) -> dict:
    """mAP (per protocol) and per-query AP for every transform under both descriptor settings."""
    transforms = transforms or list(TRANSFORMS)
    start = time.perf_counter()
    out: dict = {"dataset": bench.name, "model": net.meta["name"], "size": opts.settings.size,
                 "crop_queries": opts.crop_queries, "transforms": list(transforms), "queries": list(bench.qimlist),
                 "conditions": {}}
    named = conditions(opts.settings)
    dbs = {name: benchmark_features(net, bench, replace(opts, settings=settings))[0].db
           for name, settings in named.items()}
    results: dict[str, dict] = {name: {} for name in named}
    for transform in tqdm(transforms, desc="query transforms", disable=not opts.progress, leave=False):
        images = transformed_images(bench, transform, opts)
        for name, settings in named.items():
            queries = transformed_queries(net, images, transform, settings, opts)
            results[name][transform] = results_to_json(evaluate(similarities(dbs[name], queries), bench.gnd))["protocols"]
    for name, settings in named.items():
        out["conditions"][name] = {"settings": settings.to_dict(), "results": results[name]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return json.loads(json.dumps(out))  # the JSON record itself (e.g. the settings' scales as a list)


def main_protocol(report: dict) -> str:
    first = next(iter(report["conditions"].values()))["results"]
    protocols = list(next(iter(first.values())))
    return "medium" if "medium" in protocols else protocols[0]


def robustness_markdown(report: dict) -> str:
    """Table: transform | mAP per condition (main protocol)."""
    protocol = main_protocol(report)
    names = list(report["conditions"])
    lines = ["| query transform | " + " | ".join(f"mAP {n} ({protocol})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for t in report["transforms"]:
        cells = [report["conditions"][n]["results"][t][protocol]["mAP"] for n in names]
        lines.append(f"| {t} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def robustness_plot(report: dict, out: str | Path) -> Path:
    """PNG: mAP bars per transform and condition, each query's AP as a dot over its bar."""
    protocol = main_protocol(report)
    names, transforms = list(report["conditions"]), report["transforms"]
    fig = Figure(figsize=(max(8, 0.8 * len(transforms)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(names)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        results = report["conditions"][name]["results"]
        x = np.arange(len(transforms)) + (i - (len(names) - 1) / 2) * width
        ax.bar(x, [results[t][protocol]["mAP"] for t in transforms], width, label=f"mAP, {name}", alpha=0.7)
        for xi, t in zip(x, transforms):
            aps = [a for a in results[t][protocol]["AP"] if a is not None]
            ax.scatter(xi + rng.uniform(-width / 4, width / 4, len(aps)), aps, s=4, color="black", alpha=0.35)
    ax.set_xticks(np.arange(len(transforms)), transforms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"AP / mAP ({protocol}, %)")
    ax.set_ylim(0, 105)
    queries = "transformed queries" if report.get("crop_queries", True) else "transformed whole (uncropped) queries"
    ax.set_title(f"{report['dataset']}: {report['model']}, {queries} (dots: per-query AP)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_png(fig, out)


def write_robustness_report(report: dict, out_dir: str | Path) -> list[Path]:
    """robustness.json, robustness.md and robustness.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [Path(atomic_write_text(out / "robustness.json", json.dumps(report, indent=2))),
            Path(atomic_write_text(out / "robustness.md", robustness_markdown(report))),
            robustness_plot(report, out / "robustness.png")]
