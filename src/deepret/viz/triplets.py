"""The mined-tuples figure: per row a query, its positive (green) and hardest negatives (red)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from deepret.errors import DeepretError
from deepret.viz.png import save_png
from deepret.viz.topk import BORDER_COLOURS, thumbnail

DPI = 100
CAPTION_PX = 40  # two caption lines below each thumbnail
TITLE_PX = 44
GAP_PX = 12
KEYS = ("epoch", "paths", "classes", "d_positive", "d_negatives")


def read_tuples(path: str | os.PathLike) -> list[dict]:
    """All records of a rank run's tuples.jsonl (one JSON object per mined tuple)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DeepretError(f"tuples file {path} not found: pass the folder of a `deepret train` run "
                           "with a ranking loss (it writes RUN/tuples.jsonl)") from exc
    records = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DeepretError(f"{path}:{no} is not JSON ({e.msg}): delete the broken line") from e
        missing = [k for k in KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise DeepretError(f"{path}:{no} lacks {missing}: write it with deepret's rank trainer")
        n = len(rec["paths"])
        if n < 2 or len(rec["classes"]) != n or len(rec["d_negatives"]) != n - 2:
            raise DeepretError(f"{path}:{no}: {n} paths, {len(rec['classes'])} classes and "
                               f"{len(rec['d_negatives'])} negative distances do not match")
        records.append(rec)
    return records


def _resolve(p: str, base: Path) -> Path:
    """An image path as logged; relative ones are tried from the cwd, then from the run folder."""
    path = Path(p)
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path
    return base / path


def _fit(text: str, n: int) -> str:
    """text cut to n characters with an ellipsis, so that neighbouring captions do not overlap."""
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _cell(path: Path, label: str | None, thumb: int, border: int) -> Image.Image:
    small = thumbnail(path, thumb, upright=False)  # the raw pixels, as training decodes them
    fill = "white" if label is None else BORDER_COLOURS[label]
    return ImageOps.expand(small, border=border, fill=fill)


def triplets_figure(tuples_jsonl: str | os.PathLike, out_path: str | os.PathLike, epoch: int | None = None,
                    n: int = 4, thumb: int = 160) -> Path:
    """Draw the first `n` tuples mined in `epoch` (1-based; default: the last in the file), one row each:
    the query, its positive (green border), its hardest negatives (red border), each captioned with
    its class and its descriptor distance to the query at mining time. Writes a PNG atomically."""
    if n < 1 or thumb < 16:
        raise DeepretError(f"n={n}, thumb={thumb}: draw at least 1 tuple with thumbnails of >= 16 px")
    src = Path(tuples_jsonl)
    records = read_tuples(src)
    if not records:
        raise DeepretError(f"tuples file {src} is empty: train at least one epoch with a ranking loss")
    epochs = sorted({int(r["epoch"]) for r in records})
    epoch = epochs[-1] if epoch is None else epoch
    chosen = [r for r in records if int(r["epoch"]) == epoch]
    if not chosen:
        raise DeepretError(f"no tuples of epoch {epoch} in {src}: it has epochs {epochs} "
                           "(1-based, as logged); pass one of them")
    total = len(chosen)
    chosen = chosen[:n]

    border = max(3, thumb // 32)
    cell = thumb + 2 * border
    ncols = max(len(r["paths"]) for r in chosen)
    width = ncols * (cell + GAP_PX) + GAP_PX
    height = TITLE_PX + len(chosen) * (cell + CAPTION_PX)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)

    fontsize = 9 if thumb >= 128 else 7
    max_chars = max(6, int((cell + GAP_PX) / (0.62 * fontsize)))

    def place(image: Image.Image, row: int, col: int, caption: str) -> None:
        x = GAP_PX + col * (cell + GAP_PX)
        y_top = TITLE_PX + row * (cell + CAPTION_PX)
        ax = fig.add_axes((x / width, 1 - (y_top + cell) / height, cell / width, cell / height))
        ax.imshow(image)
        ax.set_anchor("S")
        ax.set_axis_off()
        fig.text((x + cell / 2) / width, 1 - (y_top + cell + 3) / height, caption,
                 ha="center", va="top", fontsize=fontsize, linespacing=1.3)

    for row, rec in enumerate(chosen):
        paths = [_resolve(p, src.parent) for p in rec["paths"]]
        classes = [str(c) for c in rec["classes"]]
        dists = [float(rec["d_positive"]), *map(float, rec["d_negatives"])]
        labels = [None, "positive", *["negative"] * (len(paths) - 2)]
        roles = ["query", *[f"{'pos' if c == 1 else 'neg'} d={d:.3f}" for c, d in enumerate(dists, 1)]]
        for col, (p, lab) in enumerate(zip(paths, labels)):
            place(_cell(p, lab, thumb, border), row, col, f"{_fit(classes[col], max_chars)}\n{roles[col]}")
    title = f"{src.parent.name or src.name}: epoch {epoch}, {len(chosen)} of {total} tuples"
    fig.text(0.5, 1 - (TITLE_PX / 2) / height, title, ha="center", va="center", fontsize=12)

    return save_png(fig, out_path, dpi=DPI)
