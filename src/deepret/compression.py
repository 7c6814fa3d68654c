"""Compression study: mAP against bytes per vector for exact search, scalar quantization and
(O)PQ with 8 to 64 sub-quantizers, searched with deepret.vectors over a benchmark's descriptors.

Quantizers are trained on other descriptors than the database they compress (`train`): the mini
benchmarks hold fewer than 256 images, too few for 8-bit PQ codebooks, so the study trains on other
collections, and factories that still have too few training vectors are reported as skipped.
"""
from __future__ import annotations

import json
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from deepret.datasets import load_benchmark
from deepret.errors import DeepretError
from deepret.evaluate import evaluate
from deepret.extract import extract
from deepret.fileio import atomic_write_text
from deepret.imageio import PHOTO_SUFFIXES
from deepret.models import RetrievalNet
from deepret.pipeline import RunOptions, benchmark_features
from deepret.vectors import VectorIndex, factory_ranks
from deepret.viz.png import save_png

SUBQUANTIZERS = (8, 16, 32, 64)


def training_descriptors(sources: list[str], root: str | Path, net: RetrievalNet, opts: RunOptions) -> np.ndarray:
    """Descriptors to train quantizers on: for each source, a benchmark under `root` (its database and
    query descriptors, from the feature cache) or a folder of images (class sub-folders or flat)."""
    parts = []
    for source in sources:
        if (Path(root) / source / f"gnd_{source}.pkl").is_file():
            features = benchmark_features(net, load_benchmark(source, root), opts)[0]
            parts += [features.db, features.queries]
            continue
        folder = Path(source) if Path(source).is_dir() else Path(root) / source
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
        if not paths:
            raise DeepretError(f"training source {source!r} is neither a benchmark under {root} nor a folder "
                               "of images: give benchmark names or image folders, separated by commas")
        parts.append(extract(net, paths, settings=opts.settings, device=opts.device, workers=opts.workers,
                             desc=f"{source} (training)", progress=opts.progress).vectors)
    return np.concatenate(parts)


def default_factories(dim: int) -> list[str]:
    """Flat, SQfp16, SQ8, then PQ and OPQ with 8/16/32/64 sub-quantizers of 4-bit and 8-bit codes
    (sub-quantizer counts that do not divide `dim` are left out)."""
    out = ["Flat", "SQfp16", "SQ8"]
    for bits in ("x4", ""):
        for m in (m for m in SUBQUANTIZERS if dim % m == 0):
            out += [f"PQ{m}{bits}", f"OPQ{m},PQ{m}{bits}"]
    return out


def code_bytes(index: VectorIndex) -> int:
    """Bytes of one vector's code (ids and shared codebooks left out): 4*dim for Flat, m*bits/8 for PQ;
    known before training."""
    inner = index.index
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(inner.index)
    return int(inner.sa_code_size())


@dataclass
class CompressionRow:
    """One factory's result: mAP per protocol (percent), or why it was skipped."""

    factory: str
    code_bytes: int
    mAP: dict[str, float]
    seconds: float
    skipped: str | None = None


def compression_study(db: np.ndarray, queries: np.ndarray, gnd: list[dict], train: np.ndarray,
                      factories: list[str], progress: bool = True) -> list[CompressionRow]:
    """Evaluate each factory: train on `train`, add `db`, rank all of it for every query."""
    rows = []
    for factory in tqdm(factories, desc="factories", disable=not progress, leave=False):
        start = time.perf_counter()
        size = code_bytes(VectorIndex(factory, db.shape[1]))
        try:
            ranks = factory_ranks(db, queries, factory, train=train)
        except DeepretError as exc:
            rows.append(CompressionRow(factory, size, {}, 0.0, skipped=str(exc).split(":")[0]))
            continue
        results = evaluate(ranks, gnd)
        rows.append(CompressionRow(factory, size, {p: round(r.map, 2) for p, r in results.items()},
                                   round(time.perf_counter() - start, 2)))
    return rows


def _main_protocol(rows: list[CompressionRow]) -> str:
    protocols = next((list(r.mAP) for r in rows if r.mAP), ["old"])
    return "medium" if "medium" in protocols else protocols[0]


def compression_markdown(rows: list[CompressionRow], title: str) -> str:
    """A markdown table: factory, code bytes per vector, compression ratio, mAP per protocol."""
    flat = next((r.code_bytes for r in rows if r.factory == "Flat" and r.code_bytes), None)
    protocols = next((list(r.mAP) for r in rows if r.mAP), [])
    lines = [f"**{title}**", "",
             "| factory | code bytes / vector | compression | " + " | ".join(f"mAP {p}" for p in protocols) + " |",
             "|---|---|---|" + "---|" * len(protocols)]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.factory} | {r.code_bytes} | | skipped: {r.skipped} |" + " |" * (len(protocols) - 1))
            continue
        ratio = f"{flat / r.code_bytes:.0f}x" if flat else ""
        lines.append(f"| {r.factory} | {r.code_bytes} | {ratio} | "
                     + " | ".join(f"{r.mAP[p]:.2f}" for p in protocols) + " |")
    return "\n".join(lines) + "\n"


def compression_plot(rows: list[CompressionRow], title: str, out: str | Path) -> Path:
    """PNG: mAP against code bytes per vector (log scale), one line per quantizer family."""
    protocol = _main_protocol(rows)
    families: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.skipped:
            continue
        family = ("OPQ" if "OPQ" in r.factory else "PQ" if "PQ" in r.factory else r.factory)
        if r.factory.startswith("PCA") and "PQ" in r.factory:
            family = r.factory.split(",")[0] + " + " + family
        if "PQ" in r.factory:
            family += " 4-bit codes" if r.factory.endswith("x4") else " 8-bit codes"
        families.setdefault(family, []).append((r.code_bytes, r.mAP[protocol]))
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for family, points in families.items():
        points.sort()
        x, y = zip(*points)
        ax.plot(x, y, "o-" if len(points) > 1 else "s", label=family)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector (code only)")
    ax.set_ylabel(f"mAP ({protocol}, %)")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)


def write_compression_report(rows: list[CompressionRow], meta: dict, out_dir: str | Path) -> list[Path]:
    """compression.json, compression.md and compression.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{meta['dataset']}: {meta['model']}, quantizers trained on {meta['train_vectors']} vectors "
             f"({', '.join(meta['train_on'])})")
    paths = [atomic_write_text(out / "compression.json",
                               json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2)),
             atomic_write_text(out / "compression.md", compression_markdown(rows, title)),
             compression_plot(rows, title, out / "compression.png")]
    return [Path(p) for p in paths]
