"""One writer per index at a time, the clean-up of what a killed writer left behind, and the writer's
file-system failures (a folder that cannot be written, a full disk) as one-line errors."""
from __future__ import annotations

import errno
import fcntl
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import os_error_message, printable

LOCK = "writer.lock"
# the temporary names deepret.fileio.atomic_path gives the vector files of an index while they are written
_TEMP_FILE = re.compile(r"\.(vectors-\d+\.faiss|trained\.faiss)\.[A-Za-z0-9_]+\.tmp")
_FULL = (errno.ENOSPC, errno.EDQUOT)


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
def writer_lock(index_dir: Path, needed_bytes: int | None = None) -> Iterator[None]:
    """One writer (build or update) per index at a time, across processes; on taking it, the temporary
    files of a killed writer are removed. A full disk inside is a DeepretError saying how much space
    the writer needed (`needed_bytes`, where known) and how much is free: every step commits in one
    transaction, so the index is left as it was before the failed step and the same command resumes."""
    shown = printable(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        f = open(index_dir / LOCK, "a")  # noqa: SIM115 (closed by the `with f` below)
    except FileExistsError:
        raise DeepretError(f"--index {shown} is a file, not a folder: give a folder for the index") from None
    except IsADirectoryError:
        raise DeepretError(f"{printable(index_dir / LOCK)} is a folder, not deepret's lock file: remove it "
                           f"(rmdir) and run the command again") from None
    except OSError as exc:
        raise DeepretError(f"cannot write the index folder {shown}: {os_error_message(exc)}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeepretError(f"index {shown} is being built or updated by another process: wait for it "
                               "to finish") from None
        except OSError as exc:
            raise DeepretError(f"cannot lock {printable(index_dir / LOCK)}: {os_error_message(exc)}") from None
        try:
            remove_stale_temp_files(index_dir)
            yield
        except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
            if not disk_full(exc):
                raise
            raise DeepretError(full_message(index_dir, needed_bytes)) from exc
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the quota) is full: an OSError, SQLite's SQLITE_FULL, FAISS's message."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, RuntimeError) and "No space left on device" in str(exc)


def full_message(index_dir: Path, needed_bytes: int | None) -> str:
    """The one-line error of a full disk under `index_dir`."""
    free = shutil.disk_usage(index_dir).free
    need = f"it needs about {_mb(needed_bytes)}, " if needed_bytes else ""
    return (f"disk full writing index {printable(index_dir)}: {need}{_mb(free)} are free there; free some space "
            "(or give an --index folder on another disk) and run the same command again: what was committed is kept")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
