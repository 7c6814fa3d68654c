"""Safe, restartable extraction of an image archive into a flat `jpg/` folder."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import atomic_write_text


def marker_path(jpg_dir: Path, archive_name: str) -> Path:
    """The file that records a finished extraction of archive_name (it lists the image names)."""
    return jpg_dir / f".{archive_name}.done"


def extracted_names(jpg_dir: Path, archive_name: str) -> list[str] | None:
    """Image file names extracted from archive_name into jpg_dir, or None if not (fully) done."""
    marker = marker_path(jpg_dir, archive_name)
    if not marker.is_file():
        return None
    names = marker.read_text().split("\n")
    names = [n for n in names if n]
    return names if all((jpg_dir / n).is_file() for n in names) else None


def extract_images(archive: Path, jpg_dir: Path) -> list[str]:
    """Extract every .jpg of a tgz into jpg_dir, flattening folders (paris/<landmark>/x.jpg -> x.jpg).

    Members are extracted with tarfile's "data" filter (no absolute paths, no `..`, no links out)
    into a temporary folder beside jpg_dir, then moved; a marker file is written last.
    """
    jpg_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=jpg_dir.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            archive.unlink(missing_ok=True)
            raise DeepretError(
                f"archive {archive} is corrupt or unsafe ({type(e).__name__}: {e}); it was "
                "removed, rerun the download"
            ) from e
        except OSError as e:
            raise DeepretError(f"cannot extract {archive} into {tmp} ({e}): check disk space") from e
        names = _move_jpgs(tmp, jpg_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_marker(jpg_dir, archive.name, names)
    return names


def write_marker(jpg_dir: Path, archive_name: str, names: list[str]) -> None:
    atomic_write_text(marker_path(jpg_dir, archive_name), "".join(f"{n}\n" for n in names))


def _move_jpgs(src: Path, jpg_dir: Path) -> list[str]:
    names = []
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix.lower() == ".jpg":
            os.replace(path, jpg_dir / path.name)
            names.append(path.name)
    return names


def link_images(src_dir: Path, names: list[str], jpg_dir: Path) -> None:
    """Hard-link (or copy, across file systems) already extracted images into jpg_dir."""
    jpg_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        dst = jpg_dir / name
        if dst.is_file():
            continue
        try:
            os.link(src_dir / name, dst)
        except OSError:
            shutil.copy2(src_dir / name, dst)
