"""The index's SQLite catalogue (WAL): files, raw descriptors, settings; the source of truth.

One row per file (id, path relative to the collection root, size, mtime, width, height, status,
reason: a file name is stored as its bytes, see `name_param`); the raw float32 descriptor of
every usable file, in append order (`seq`); the ids removed since the current vector-index file
was written (`tombstones`); and `meta` (JSON values): root, model, fingerprint, settings,
dimension, factory, backend, the current vector file, `not_indexed` (the counts by suffix of the
files the last scan found but does not index) and a `version`
that every committed change bumps. Writers commit whole steps in one transaction, so a reader (its
own snapshot under WAL) always sees a finished state.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from deepret.errors import DeepretError

CATALOGUE = "catalogue.sqlite"
FORMAT = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER, mtime_ns INTEGER,
    width INTEGER, height INTEGER, status TEXT NOT NULL DEFAULT 'pending', reason TEXT);
CREATE TABLE IF NOT EXISTS vectors (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER UNIQUE NOT NULL,
    vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY);
"""


NAME = "CAST(? AS TEXT)"  # the SQL parameter of a file name, bound with name_param


def name_param(name: str) -> bytes:
    """A file name (a str that holds undecodable bytes as surrogate escapes, os.fsdecode) as the bytes
    the catalogue stores, bound as NAME: any name the file system allows is kept as it is."""
    return name.encode("utf-8", "surrogateescape")


def _name_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Catalogue:
    """A connection to DIR/catalogue.sqlite; `write()` and `read()` are transactions."""

    def __init__(self, index_dir: str | Path, create: bool = False, name: str = CATALOGUE, wal: bool = True) -> None:
        """`name`, `wal`: another file of the same tables (a rank's part of a distributed build, with a
        rollback journal so that it may live on a network file system)."""
        self.dir = Path(index_dir)
        path = self.dir / name
        if not create and not path.is_file():
            raise DeepretError(f"{self.dir} is not a deepret index (no {name}): build one with "
                               f"`deepret index build PHOTOS --index {self.dir}`")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=120, isolation_level=None, check_same_thread=False)
            self.db.text_factory = _name_text  # names that are not UTF-8 come back as they were stored
            self.db.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
            if wal:
                self.db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DeepretError(f"cannot open the catalogue {path} ({exc}): it is not an index or it is "
                               "damaged; build the index again into a new folder") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on an exception)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot: everything read inside sees the same committed state."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # --- meta
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def all_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    @staticmethod
    def set_meta(db: sqlite3.Connection, **values: Any) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                       [(k, json.dumps(v)) for k, v in values.items()])

    @staticmethod
    def bump(db: sqlite3.Connection) -> None:
        """Mark a committed change for readers that hold an older state."""
        db.execute("INSERT INTO meta (key, value) VALUES ('version', '1') ON CONFLICT(key) "
                   "DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def version(self) -> int:
        return int(self.meta("version", 0))

    # --- files
    def files(self) -> dict[str, tuple[int, int, int, str]]:
        """{path: (id, size, mtime_ns, status)} of every file row."""
        return {p: (i, s, m, st) for i, p, s, m, st in
                self.db.execute("SELECT id, path, size, mtime_ns, status FROM files")}

    def skipped(self) -> list[dict[str, str]]:
        return [{"path": p, "reason": r} for p, r in
                self.db.execute("SELECT path, reason FROM files WHERE status = 'skipped' ORDER BY path")]

    def count(self, status: str = "ok") -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM files WHERE status = ?", (status,)).fetchone()[0])

    def next_file_id(self) -> int:
        """The id the next file row gets (ids are never reused, also after removals)."""
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'files'")
                   .fetchone()[0]) + 1

    def path_of(self, image_id: int) -> str | None:
        row = self.db.execute("SELECT path FROM files WHERE id = ? AND status = 'ok'", (int(image_id),)).fetchone()
        return row[0] if row else None

    # --- vectors
    @staticmethod
    def store(db: sqlite3.Connection, ids: list[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        db.executemany("INSERT OR REPLACE INTO vectors (id, vec) VALUES (?, ?)",
                       [(int(i), v.tobytes()) for i, v in zip(ids, vectors)])

    def vectors(self, dim: int, after_seq: int = 0, upto_seq: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, descriptors (n, dim), last seq) of the vectors with after_seq < seq <= upto_seq."""
        sql, args = "SELECT seq, id, vec FROM vectors WHERE seq > ?", [after_seq]
        if upto_seq is not None:
            sql, args = sql + " AND seq <= ?", [after_seq, upto_seq]
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), after_seq
        ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        x = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, x, int(rows[-1][0])

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM vectors").fetchone()[0])

    def tombstones(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM tombstones")), np.int64)

    @staticmethod
    def remove(db: sqlite3.Connection, ids: list[int]) -> None:
        """Delete files, their vectors, and remember the ids for the current vector-index file."""
        rows = [(int(i),) for i in ids]
        db.executemany("DELETE FROM files WHERE id = ?", rows)
        db.executemany("DELETE FROM vectors WHERE id = ?", rows)
        db.executemany("INSERT OR IGNORE INTO tombstones (id) VALUES (?)", rows)
