"""Which files of a collection are photos, which are not (counted by kind), and why a photo that cannot
be opened is skipped.

Names are kept as the file system gives them (os.walk's str: bytes that are not UTF-8 are surrogate
escapes), so a name that is not UTF-8 or holds a newline is indexed like any other; outputs show
names with deepret.fileio.printable. Symbolic links follow one rule: a link to a photo inside the
collection is indexed (and served) under its own name, a link that resolves outside the collection
is listed and skipped with the reason "symlink out of the collection" (its photo is never read, nor
served). Links to folders are not followed."""
from __future__ import annotations

import os
from pathlib import Path

from deepret.errors import DeepretError
from deepret.fileio import printable
from deepret.imageio import PHOTO_SUFFIXES

UNREADABLE = (-1, -1)  # (size, mtime_ns) of a listed photo that cannot be stat'ed (a dangling link...)
# Files a collection holds that are not photos the index reads: counted by suffix, said of their kind.
RAW_SUFFIXES = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
                ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".mrw", ".kdc", ".dcr")
VIDEO_SUFFIXES = (".mov", ".mp4", ".m4v", ".avi", ".mkv", ".3gp", ".mts", ".m2ts", ".wmv", ".mpg", ".mpeg",
                  ".webm", ".flv")
SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini")  # left out unsaid, as hidden (dot) files are
NO_SUFFIX = "(no suffix)"


def scan(root: str | Path, exclude: Path | None = None,
         not_indexed: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
    """{path relative to root ('/' separators): (size, mtime_ns)} of every photo under root.

    `not_indexed`, when given, gets {suffix (lower case): count} of the other files (RAW, videos,
    documents...), hidden (dot) and system files (Thumbs.db, desktop.ini) left out.
    A name that cannot be stat'ed (a dangling symbolic link, no permission) is listed as UNREADABLE: it
    gets a catalogue row and is skipped with its reason at extraction (and retried once it changes). A
    file removed during the walk is left out, as if the walk had come a moment later."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DeepretError(f"photo folder {printable(root)} {what}: give a folder of photos")
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and
                         (exclude is None or Path(folder, d).resolve() != exclude))
        for name in names:
            if name.lower().endswith(PHOTO_SUFFIXES) and not name.startswith("."):
                path = Path(folder, name)
                try:
                    st = path.stat()
                    found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    if os.path.islink(path):
                        found[path.relative_to(root).as_posix()] = UNREADABLE
                except OSError:
                    found[path.relative_to(root).as_posix()] = UNREADABLE
            elif not_indexed is not None and not name.startswith(".") and name.lower() not in SYSTEM_FILES:
                suffix = os.path.splitext(name)[1].lower() or NO_SUFFIX
                not_indexed[suffix] = not_indexed.get(suffix, 0) + 1
    return dict(sorted(found.items()))


def kind_of(suffix: str) -> str:
    """What a file not indexed is, by its suffix: 'RAW', 'video' or 'other'."""
    return "RAW" if suffix in RAW_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "other"


def by_count(counts: dict[str, int]) -> dict[str, int]:
    """The counts most first (then by suffix), as `Index.info()['not_indexed']` gives them."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def not_indexed_line(counts: dict[str, int]) -> str:
    """'412 files not indexed: 300 .mov (video), 112 .cr2 (RAW, not supported)' ('' when there are none)."""
    if not counts:
        return ""
    labels = {"RAW": " (RAW, not supported)", "video": " (video)", "other": ""}
    parts = [f"{n} {suffix}{labels[kind_of(suffix)]}" for suffix, n in by_count(counts).items()]
    total = sum(counts.values())
    return f"{total} file{'s' if total != 1 else ''} not indexed: {', '.join(parts)}"


def outside_link_reason(root: Path, path: Path) -> str | None:
    """Why `path` (under the resolved `root`) is not indexed when it is a symbolic link that resolves
    outside the collection (None: not such a link; a broken link gets its own reason, unreadable_reason)."""
    if not os.path.islink(path) or not os.path.exists(path):
        return None
    target = Path(os.path.realpath(path))
    if target.is_relative_to(root):
        return None
    return f"symlink out of the collection (to {printable(target)}): copy the photo into the folder to index it"


def photo_in(root: Path, path: Path) -> str:
    """The path relative to root of a photo given to be indexed (DeepretError if it is outside root, missing
    or not a photo)."""
    path = (root / path) if not path.is_absolute() else path
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        raise DeepretError(f"{printable(path)} is not inside the indexed folder {printable(root)} (a symlink out "
                           "of the collection is not indexed): copy it there first") from None
    if not path.is_file():
        raise DeepretError(f"{printable(path)} not found: give a photo inside {printable(root)}")
    if not path.name.lower().endswith(PHOTO_SUFFIXES):
        raise DeepretError(f"{printable(path)} is not a photo ({', '.join(PHOTO_SUFFIXES)})")
    return rel.as_posix()


def unreadable_reason(path: Path, reason: str) -> str:
    """A clearer reason than the decoder's for a file that cannot be opened at all."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return "not found (removed during the build)"
    except PermissionError:
        return "cannot be read: permission denied"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a broken symbolic link (to {printable(os.readlink(path))})"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        return "cannot be read: permission denied"
    except IsADirectoryError:
        return "is a directory, not a photo"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return reason
