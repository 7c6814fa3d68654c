"""Writing files atomically: a reader sees the old file or the whole new one, never a part.

Every output deepret writes (features, checkpoints, figures, reports, JSON, ground truth, index
files) goes through here: a temporary file in the same folder, fsync, then `os.replace`. The
result gets the usual mode from the umask (0644 under umask 022), not mkstemp's private 0600.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask_mode() -> int:
    """0o666 minus the process umask (read without changing it for other threads where possible)."""
    try:  # Linux: the umask is in /proc without touching it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_open(path: str | Path, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; on success it replaces `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path, fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` for libraries that write by file name (torch.save, faiss):
    on success it is fsynced and replaces `path`; on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
