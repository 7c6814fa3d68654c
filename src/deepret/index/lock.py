"""One writer per index at a time, and the clean-up of what a killed writer left behind."""
from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deepret.errors import DeepretError

# the temporary names deepret.fileio.atomic_path gives the vector files of an index while they are written
_TEMP_FILE = re.compile(r"\.(vectors-\d+\.faiss|trained\.faiss)\.[A-Za-z0-9_]+\.tmp")


def remove_stale_temp_files(index_dir: Path) -> list[Path]:
    """Delete temporary vector files left by a writer that was killed while saving (call with the
    writer lock held: no other process writes them then)."""
    removed = []
    for path in index_dir.glob(".*.tmp"):
        if _TEMP_FILE.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """One writer (build or update) per index at a time, across processes; on taking it, the temporary
    files of a killed writer are removed."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / "writer.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeepretError(f"index {index_dir} is being built or updated by another process: wait for it "
                               "to finish") from None
        try:
            remove_stale_temp_files(index_dir)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
