"""Writing files atomically: a reader sees the old file or the whole new one, never a part.

Every output deepret writes (features, checkpoints, figures, reports, JSON, ground truth, index
files) goes through here: a temporary file in the same folder, fsync, then `os.replace`. The
result gets the usual mode from the umask (0644 under umask 022), not mkstemp's private 0600.

Outputs named on the command line follow one rule (`check_output`): they go into a folder that
exists. deepret creates the file, or the named folder itself, never the folders above it.

File names are kept as the file system gives them: a str where bytes that are not UTF-8 are
Python's surrogate escapes (os.fsdecode), so any name opens again. `printable` is how every output
(CLI lines, JSON) shows a name.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from deepret.errors import DeepretError


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


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name: str | os.PathLike, backslash: bool = True) -> str:
    """`name` on one line of valid UTF-8, as GNU `ls -b` shows it: a backslash is doubled, newline, CR
    and tab are written \\n \\r \\t, another ASCII control character or a byte that is not UTF-8 is
    written \\xHH (the byte), a C1 control character \\u0080-\\u009f, every other character is kept.
    Unambiguous: no two names show alike. `backslash` False: a message, its backslashes kept."""
    out = []
    for ch in os.fspath(name):
        code = ord(ch)
        if ch in _ESCAPES and (backslash or ch != "\\"):
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte code - 0xDC00 was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000:
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")  # U+0085 is not byte 85
        else:
            out.append(ch)
    return "".join(out)


def check_output(path: str | Path, folder: bool = False) -> Path:
    """`path` if an output may be written there: its parent folder exists (deepret never creates the
    folders above an output) and, for a file, it is not a folder (`folder`: it is not a file).
    DeepretError otherwise, saying what to do."""
    path = Path(path)
    parent = path.absolute().parent
    if not parent.is_dir():
        what = "a file, not a folder" if parent.exists() else "does not exist"
        raise DeepretError(f"folder {printable(parent)} {what}: create it first (mkdir -p "
                           f"{printable(parent)}) or write {printable(path.name)} elsewhere")
    if folder and path.exists() and not path.is_dir():
        raise DeepretError(f"{printable(path)} is a file, not a folder: give a folder (new or existing)")
    if not folder and path.is_dir():
        raise DeepretError(f"{printable(path)} is a folder: give a file name, e.g. {printable(path / 'out')}")
    return path


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another disk",
    errno.EACCES: "permission denied: give a path you may write, or change its permissions",
    errno.EPERM: "operation not permitted: give a path you may write, or change its permissions",
    errno.EROFS: "read-only file system: give a path on a writable one",
    errno.EISDIR: "is a folder where a file belongs: remove it or give another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
    errno.EEXIST: "exists already, as a file where a folder belongs: give another path",
    errno.ENOENT: "not found: check the path",
    errno.ENAMETOOLONG: "name too long: give a shorter path",
    errno.ENOMEM: "out of memory",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and what to do, by errno."""
    names = " -> ".join(printable(n) for n in (exc.filename, exc.filename2) if n is not None)
    what = _OS_HINTS.get(exc.errno) or (exc.strerror or str(exc) or exc.__class__.__name__)
    return f"{names}: {what}" if names else what


def sha256_file(path: str | Path, limit: int | None = None) -> str:
    """Hex sha256 of a file, or of its first `limit` bytes."""
    import hashlib

    with open(path, "rb") as f:
        if limit is not None:
            return hashlib.sha256(f.read(limit)).hexdigest()
        return hashlib.file_digest(f, "sha256").hexdigest()
