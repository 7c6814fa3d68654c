"""Thumbnails of collection photos, made upright (EXIF) and cached on disk inside the index folder."""
from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

from PIL import Image

from deepret.fileio import atomic_write_bytes
from deepret.imageio import open_rgb

THUMB_SIZES = (64, 128, 256, 512, 1024)


def thumb_size(requested: int) -> int:
    """The smallest cached size >= `requested` (the largest for bigger requests): a bounded cache."""
    return next((s for s in THUMB_SIZES if s >= requested), THUMB_SIZES[-1])


def thumbnail(photo: Path, cache_dir: Path, size: int) -> bytes:
    """JPEG bytes of `photo` upright with its longest side at most `size`, from the cache if fresh.

    The cache key holds the photo's path, size and mtime, so a changed photo gets a new thumbnail.
    Decoded as the index decodes it (deepret.imageio: upright, pixel limit, any mode to RGB); an
    ImageError if it cannot be. Written atomically; an unwritable cache folder only costs the caching.
    """
    st = photo.stat()
    key = hashlib.sha1(f"{photo}\0{st.st_size}\0{st.st_mtime_ns}".encode(errors="surrogateescape")).hexdigest()
    cached = cache_dir / str(size) / key[:2] / f"{key}.jpg"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    im = open_rgb(photo, draft_to=(size, size), upright=True)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        atomic_write_bytes(cached, data, fsync=False)
    return data


def cache_dir_of(index_dir: str | Path) -> Path:
    """Where thumbnails of the index at `index_dir` are cached."""
    return Path(index_dir) / "thumbs"

