"""Checking what clients send: uploaded photos (size, format, pixel limit, decoding), boxes, safe paths.

Every check raises `BadInput` with an HTTP status and a one-line message; nothing here touches the index.
"""
from __future__ import annotations

import io
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MIN_BOX_SIDE = 4  # pixels: a smaller box has no content to describe

# Pillow format name -> file extension for saved uploads (the formats a browser shows too).
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}

# EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap when made upright.
_TRANSPOSED = {5, 6, 7, 8}


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
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Check that uploaded bytes are a whole, reasonable photo by decoding them; its upright size.

    The pixel limit is checked on the header, before any pixel is decoded (decompression bombs).
    """
    name = _printable(name) or "upload"
    check_size(len(data), max_bytes, name)
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadInput(415, f"{name} is not an image that can be read: send a JPEG, PNG or WebP photo") from None
    except Image.DecompressionBombError:
        raise BadInput(413, f"{name} has too many pixels (over {max_pixels:,}): send a smaller photo") from None
    with im:
        if im.format not in UPLOAD_FORMATS:
            raise BadInput(415, f"{name} is a {im.format} file: send a JPEG, PNG, WebP, GIF, BMP or TIFF photo")
        w, h = im.size
        if w * h > max_pixels:
            raise BadInput(413, f"{name} is {w}x{h} pixels, over the limit of {max_pixels:,}: send a smaller photo")
        if w < 1 or h < 1:
            raise BadInput(400, f"{name} has no pixels: send a photo")
        try:
            im.load()
            upright = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError:
            raise BadInput(413, f"{name} has too many pixels: send a smaller photo") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInput(400, f"{name} is corrupt or truncated ({reason}): send the whole photo") from None
        return Photo(data, im.format, name, upright.width, upright.height)


def upright_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a photo as shown upright (EXIF orientation applied), from its header."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in _TRANSPOSED else (w, h)


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


def _printable(text: str | None) -> str:
    """A client-given name shortened to one printable line for messages."""
    text = "".join(c for c in (text or "") if c.isprintable())
    return text[:80]


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB"
