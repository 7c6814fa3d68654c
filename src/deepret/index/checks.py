"""Checksums of the files an index publishes, the cheap check made on opening them, and the kill hook
of the fault benchmark.

When a writer publishes a file (a vector file, trained.faiss) it records in the catalogue its size,
sha256, the sha256 of its first 4 KB and its stamp (inode, mtime, ctime after the rename). Opening
checks the size, the first 4 KB and the stamp; only a file whose stamp changed since it was written
(something wrote to it, or the folder was copied) is hashed in full before use. `deepret index
verify` hashes everything (deepret.index.integrity).
"""
from __future__ import annotations

import os
import signal
import zlib
from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import sha256_file

HEAD = 4096  # bytes of a file's beginning checked on every open
FAULT_ENV = "DEEPRET_FAULT"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL here when $DEEPRET_FAULT is `name` (bench/kill_index.py and the
    tests inject kills at exact moments of an update this way; unset, it does nothing)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def repair_hint(index_dir: Path) -> str:
    return f"run `deepret index repair --index {index_dir}`"


def vector_crc(blob: bytes) -> int:
    """The checksum stored with each raw descriptor in the catalogue."""
    return zlib.crc32(blob)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_record(path: Path) -> dict:
    """What the catalogue records of a file just published: {size, sha256, head, stamp}."""
    st = path.stat()
    return {"size": st.st_size, "sha256": sha256_file(path), "head": sha256_file(path, HEAD), "stamp": _stamp(st)}


def restamp(path: Path, record: dict) -> dict:
    """The record with the file's current stamp (after the file was checked in full)."""
    return {**record, "stamp": _stamp(path.stat())}


def file_problem(path: Path, record: dict | None, full: bool = False) -> str | None:
    """Why `path` is not the file `record` describes (None: it is). Cheap unless `full` or the file's
    stamp changed since it was recorded; with no record (an index written before records), only
    that it exists."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if record is None:
        return None
    if st.st_size != record["size"]:
        return f"is damaged ({st.st_size} bytes, {record['size']} written)"
    try:
        if sha256_file(path, HEAD) != record["head"]:
            return "is damaged (its header changed since it was written)"
        if (full or _stamp(st) != record.get("stamp")) and sha256_file(path) != record["sha256"]:
            return "is damaged (its checksum differs from the one recorded when it was written)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def check_file(path: Path, record: dict | None, index_dir: Path) -> None:
    """DeepretError naming the file and the repair command if `path` is not the recorded file."""
    problem = file_problem(path, record)
    if problem is not None:
        raise DeepretError(f"{path} {problem}: {repair_hint(index_dir)}")
