"""Thumbnails of collection photos, made upright (EXIF) and cached on disk inside the index folder."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, ImageOps

from deepret.fileio import atomic_write_bytes

THUMB_SIZES = (64, 128, 256, 512, 1024)


def thumb_size(requested: int) -> int:
    """The smallest cached size >= `requested` (the largest for bigger requests): a bounded cache."""
    return next((s for s in THUMB_SIZES if s >= requested), THUMB_SIZES[-1])


def thumbnail(photo: Path, cache_dir: Path, size: int) -> bytes:
    """JPEG bytes of `photo` upright with its longest side at most `size`, from the cache if fresh.

    The cache key holds the photo's path, size and mtime, so a changed photo gets a new thumbnail.
    Written atomically; an unwritable cache folder only costs the caching.
    """
    st = photo.stat()
    key = hashlib.sha1(f"{photo}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    cached = cache_dir / str(size) / key[:2] / f"{key}.jpg"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    with Image.open(photo) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    try:
        atomic_write_bytes(cached, data, fsync=False)
    except OSError:
        pass
    return data


def cache_dir_of(index_dir: str | Path) -> Path:
    """Where thumbnails of the index at `index_dir` are cached."""
    return Path(index_dir) / "thumbs"

