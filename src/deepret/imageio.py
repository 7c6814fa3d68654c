"""Reading photos: header sizes, query crops, resizing to a target shape, normalising to a tensor."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from deepret.errors import DeepretError

BBox = Sequence[float]


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """Image.open with one-line DeepretErrors for missing and corrupt files."""
    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise DeepretError(f"image {path} not found: check the dataset root or run `deepret download`") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DeepretError(f"image {path} is corrupt or not an image ({exc}): replace or remove it") from None


def open_rgb(path: str | Path, bbx: BBox | None = None, draft_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode `path` as RGB, cropped to `bbx` (x1, y1, x2, y2 in original pixels) when given.

    `draft_to` (w, h) lets the JPEG decoder scale down by a power of two while staying >= that size.
    """
    with _opened(path) as im:
        full_w, full_h = im.size
        if draft_to is not None and bbx is None:
            im.draft("RGB", draft_to)
        im = im.convert("RGB")
        return im.crop(_clip_box(bbx, full_w, full_h)) if bbx is not None else im


def image_size(path: str | Path, bbx: BBox | None = None) -> tuple[int, int]:
    """(width, height) from the file header (or of the bbx crop), without decoding pixels."""
    with _opened(path) as im:
        w, h = im.size
    if bbx is None:
        return w, h
    x1, y1, x2, y2 = _clip_box(bbx, w, h)
    return x2 - x1, y2 - y1


def _clip_box(bbx: BBox, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in bbx)
    x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
    return x1, y1, max(x1 + 1, min(x2, w)), max(y1 + 1, min(y2, h))


def target_shape(w: int, h: int, longest: int, round_to: int = 1) -> tuple[int, int]:
    """(height, width) with the longest side `longest` and the other side rounded to `round_to` px."""
    if w >= h:
        short = max(round_to, int(round(h * longest / w / round_to)) * round_to)
        return short, longest
    short = max(round_to, int(round(w * longest / h / round_to)) * round_to)
    return longest, short


def to_tensor(im: Image.Image, shape: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Resize (bilinear, antialiased) to `shape` = (H, W) and normalise to a (3, H, W) float tensor."""
    h, w = shape
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t
