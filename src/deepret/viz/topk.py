"""The top-K figure: the query (with its bounding box) and its K best results, bordered by label."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from deepret.errors import DeepretError

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


def _load(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DeepretError(f"image not found: {path}: check the image folder") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DeepretError(f"cannot read image {path} ({e}): replace or remove the file") from None


def _query_thumb(path, bbx: Sequence[float] | None, thumb: int) -> Image.Image:
    """Query thumbnail with its bounding box (x1, y1, x2, y2 in original pixels) drawn on it."""
    im = _load(path)
    small = ImageOps.contain(im, (thumb, thumb))
    if bbx is not None:
        if len(bbx) != 4:
            raise DeepretError(f"query bbx {list(bbx)} is not (x1, y1, x2, y2)")
        s = small.width / im.width
        limits = (small.width - 1, small.height - 1) * 2
        box = [max(0.0, min(v * s, lim)) for v, lim in zip(bbx, limits)]
        ImageDraw.Draw(small).rectangle(box, outline=BBX_COLOUR, width=max(2, thumb // 85))
    return small


def _result_thumb(path, label: str, thumb: int, border: int) -> Image.Image:
    small = ImageOps.contain(_load(path), (thumb, thumb))
    return ImageOps.expand(small, border=border, fill=BORDER_COLOURS[label])


def topk_figure(
    query_path: str | os.PathLike,
    query_bbx: Sequence[float] | None,
    result_paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    out_path: str | os.PathLike,
    title: str,
    thumb: int = 256,
    scores: Sequence[float] | None = None,
) -> Path:
    """Draw the query and its ranked results (border green/red/grey for positive/negative/junk).

    Results fill rows of five to the right of the query; below each: rank, label and, when
    ``scores`` is given, the similarity. Writes a PNG atomically and returns its path.
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
    query = ImageOps.expand(_query_thumb(query_path, query_bbx, thumb), border=border, fill="white")
    results = [_result_thumb(p, lab, thumb, border) for p, lab in zip(result_paths, labels)]

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

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
