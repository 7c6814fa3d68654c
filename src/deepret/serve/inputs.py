"""Checking what clients send: uploaded photos (size, format, pixel limit, decoding), boxes, safe paths.

Every check raises `BadInput` with an HTTP status and a one-line message; nothing here touches the index.
Photos are decoded by deepret.imageio, as the index decodes them.
"""
from __future__ import annotations

import io
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from deepret.imageio import LIMIT_ADVICE, ImageError, open_rgb, read_header

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Uploads only: a web client may send a photo of at most 50 Mpx (the collection's own photos are read up to
# deepret.imageio.DEFAULT_MAX_PIXELS, the index's --max-pixels), so one request decodes at most ~150 MB.
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
MIN_BOX_SIDE = 4  # pixels: a smaller box has no content to describe

# Pillow format name -> file extension for saved uploads (HEIF: pillow-heif's name for HEIC and HEIF).
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                  "HEIF": ".heic", "AVIF": ".avif"}


class BadInput(Exception):
    """A client error: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Photo:
    """A checked upload: its original bytes, their format and the photo's upright size."""

    data: bytes
    format: str
    name: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return UPLOAD_FORMATS[self.format]


def check_size(n_bytes: int, max_bytes: int, name: str = "upload") -> None:
    """413 when `n_bytes` exceeds the limit, 400 when the upload is empty."""
    if n_bytes > max_bytes:
        raise BadInput(413, f"{name} is larger than the limit of {_mb(max_bytes)}: send a smaller photo")
    if n_bytes == 0:
        raise BadInput(400, f"{name} is empty: send a photo (JPEG, PNG, WebP)")


def decode_photo(data: bytes, name: str, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> Photo:
    """Check that uploaded bytes are a whole, reasonable photo by decoding them; its upright size.

    The pixel limit is checked on the header, before any pixel is decoded (decompression bombs).
    """
    name = _printable(name) or "upload"
    check_size(len(data), max_bytes, name)
    try:
        header = read_header(io.BytesIO(data), upright=True, max_pixels=max_pixels)
    except ImageError as exc:
        if exc.advice == LIMIT_ADVICE:
            raise BadInput(413, f"{name} {_line(exc.reason)}: send a smaller photo") from None
        raise BadInput(415, f"{name} is not an image that can be read: send a JPEG, PNG or WebP photo") from None
    if header.format not in UPLOAD_FORMATS:
        raise BadInput(415, f"{name} is a {header.format} file: send a JPEG, PNG, WebP, HEIC, AVIF, GIF, BMP "
                                 "or TIFF photo")
    try:
        open_rgb(io.BytesIO(data), max_pixels=max_pixels)  # every pixel, as the index will decode them
    except ImageError as exc:
        status, advice = (413, "send a smaller photo") if exc.advice == LIMIT_ADVICE else (400, "send the whole photo")
        raise BadInput(status, f"{name} {_line(exc.reason)}: {advice}") from None
    return Photo(data, header.format, name, header.width, header.height)


def parse_box(text: str | None, width: int, height: int) -> tuple[float, float, float, float] | None:
    """'x1,y1,x2,y2' in the upright image's pixels -> a tuple, or None for no box; 422 if it is not
    four finite numbers describing a box of at least MIN_BOX_SIDE px inside the image."""
    if text is None or not text.strip():
        return None
    parts = text.replace(" ", "").split(",")
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise BadInput(422, f"box {_printable(text)!r} must be four numbers x1,y1,x2,y2 in the image's pixels")
    x1, y1, x2, y2 = box
    slack = 1.0  # rounding in the browser may put an edge a fraction of a pixel outside
    if x1 < -slack or y1 < -slack or x2 > width + slack or y2 > height + slack:
        raise BadInput(422, f"box {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {width}x{height} image")
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        raise BadInput(422, f"box {x1:g},{y1:g},{x2:g},{y2:g} must have x1 < x2 and y1 < y2 and sides of at least "
                            f"{MIN_BOX_SIDE} px")
    return x1, y1, x2, y2


def inside(root: str | Path, path: str | Path) -> Path:
    """The real path of `path` if it is a regular file inside `root` after resolving symlinks and '..';
    404 otherwise (the same answer for 'outside' and 'missing', so nothing is revealed)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root or not os.path.isfile(real):
        raise BadInput(404, "no such image in the collection")
    return Path(real)


def upload_name(photo: Photo) -> str:
    """A fresh, safe file name for an upload (nothing of the client's name is used)."""
    return f"{uuid.uuid4().hex}{photo.extension}"


def _line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _printable(text: str | None) -> str:
    """A client-given name shortened to one printable line for messages."""
    text = "".join(c for c in (text or "") if c.isprintable())
    return text[:80]


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB"
