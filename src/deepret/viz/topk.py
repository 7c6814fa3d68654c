"""The top-K figure: the query (with its bounding box) and its K best results, bordered by label.

Photos are decoded by deepret.imageio.open_rgb, as for descriptors: upright (EXIF) unless told to keep
the raw pixels (benchmarks, whose boxes are in raw coordinates).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from deepret.errors import DeepretError
from deepret.imageio import open_rgb
from deepret.viz.png import save_png

BORDER_COLOURS: dict[str, tuple[int, int, int]] = {
    "positive": (0, 200, 0),
    "negative": (220, 0, 0),
    "junk": (128, 128, 128),
    "result": (40, 110, 220),  # no ground truth (a search of one's own photos)
}
BBX_COLOUR = (255, 220, 0)
PER_ROW = 5  # results per row
DPI = 100
CAPTION_PX = 36  # room below each thumbnail
TITLE_PX = 44  # room for the title on top
GAP_PX = 12  # horizontal gap between thumbnails


def thumbnail(path: str | os.PathLike, thumb: int, upright: bool) -> Image.Image:
    """`path` decoded (upright or raw) and shrunk to fit a `thumb` x `thumb` square."""
    return ImageOps.contain(open_rgb(path, upright=upright), (thumb, thumb))


def _query_thumb(path, bbx: Sequence[float] | None, thumb: int, upright: bool) -> Image.Image:
    """Query thumbnail with its bounding box (x1, y1, x2, y2 in the pixels of the decoded image:
    upright ones when `upright`) drawn on it."""
    im = open_rgb(path, upright=upright)
    small = ImageOps.contain(im, (thumb, thumb))
    if bbx is not None:
        if len(bbx) != 4:
            raise DeepretError(f"query bbx {list(bbx)} is not (x1, y1, x2, y2)")
        s = small.width / im.width
        limits = (small.width - 1, small.height - 1) * 2
        box = [max(0.0, min(v * s, lim)) for v, lim in zip(bbx, limits)]
        ImageDraw.Draw(small).rectangle(box, outline=BBX_COLOUR, width=max(2, thumb // 85))
    return small


def _result_thumb(path, label: str, thumb: int, border: int, upright: bool) -> Image.Image:
    return ImageOps.expand(thumbnail(path, thumb, upright), border=border, fill=BORDER_COLOURS[label])


def topk_figure(
    query_path: str | os.PathLike,
    query_bbx: Sequence[float] | None,
    result_paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    out_path: str | os.PathLike,
    title: str,
    thumb: int = 256,
    scores: Sequence[float] | None = None,
    upright: bool = True,
) -> Path:
    """Draw the query and its ranked results (border green/red/grey for positive/negative/junk).

    Results fill rows of five to the right of the query; below each: rank, label and, when
    ``scores`` is given, the similarity. ``upright``: photos shown with their EXIF orientation applied
    and ``query_bbx`` in upright pixels, as ``deepret index search --box`` takes it; False: the raw
    pixels, as benchmarks give their boxes. Writes a PNG atomically and returns its path.
    """
    n = len(result_paths)
    if len(labels) != n or (scores is not None and len(scores) != n):
        raise DeepretError(
            f"{n} result images but {len(labels)} labels"
            + ("" if scores is None else f" and {len(scores)} scores")
            + ": pass one label (and score) per result"
        )
    bad = sorted(set(labels) - set(BORDER_COLOURS))
    if bad:
        raise DeepretError(f"unknown result labels {bad}: use {sorted(BORDER_COLOURS)}")

    border = max(3, thumb // 32)
    cell = thumb + 2 * border
    query = ImageOps.expand(_query_thumb(query_path, query_bbx, thumb, upright), border=border, fill="white")
    results = [_result_thumb(p, lab, thumb, border, upright) for p, lab in zip(result_paths, labels)]

    ncols = 1 + max(1, min(len(results), PER_ROW))
    nrows = max(1, math.ceil(len(results) / PER_ROW))
    width = ncols * (cell + GAP_PX) + GAP_PX
    height = TITLE_PX + nrows * (cell + CAPTION_PX)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def place(image: Image.Image, row: int, col: int, caption: str) -> None:
        x = GAP_PX + col * (cell + GAP_PX)
        y_top = TITLE_PX + row * (cell + CAPTION_PX)
        ax = fig.add_axes((x / width, 1 - (y_top + cell) / height, cell / width, cell / height))
        ax.imshow(image)
        ax.set_anchor("S")  # sit on the caption
        ax.set_axis_off()
        fig.text((x + cell / 2) / width, 1 - (y_top + cell + 4) / height, caption,
                 ha="center", va="top", fontsize=10)

    place(query, 0, 0, "query")
    for i, (image, label) in enumerate(zip(results, labels)):
        caption = f"#{i + 1} {label}" + ("" if scores is None else f"  {scores[i]:.3f}")
        place(image, i // PER_ROW, 1 + i % PER_ROW, caption)
    fig.text(0.5, 1 - (TITLE_PX / 2) / height, title, ha="center", va="center", fontsize=13)

    return save_png(fig, out_path, dpi=DPI)
