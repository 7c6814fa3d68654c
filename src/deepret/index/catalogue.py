"""The index's SQLite catalogue (WAL): files, raw descriptors, settings; the source of truth.

One row per file (id, path relative to the collection root, size, mtime, width, height, status,
reason: a file name is stored as its bytes, see `name_param`); the raw float32 descriptor of
every usable file, in append order (`seq`); the ids removed since the current vector-index file
was written (`tombstones`); and `meta` (JSON values): root, model, fingerprint, settings,
dimension, factory, backend, the current vector file, `not_indexed` (the counts by suffix of the
files the last scan found but does not index) and a `version`
that every committed change bumps. Writers commit whole steps in one transaction, so a reader (its
own snapshot under WAL) always sees a finished state.

Every descriptor row carries its checksum (`crc`, deepret.index.checks.vector_crc), checked whenever
it is read; SQLite's own errors on a damaged file ("database disk image is malformed") become a
DeepretError naming the catalogue and `deepret index repair`.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from deepret.errors import DeepretError
from deepret.index.checks import repair_hint, vector_crc

CATALOGUE = "catalogue.sqlite"
FORMAT = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER, mtime_ns INTEGER,
    width INTEGER, height INTEGER, status TEXT NOT NULL DEFAULT 'pending', reason TEXT);
CREATE TABLE IF NOT EXISTS vectors (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER UNIQUE NOT NULL,
    vec BLOB NOT NULL, crc INTEGER);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY);
"""
_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite3 error means the file is damaged (not busy, locked, or a bug of ours)."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", None) in _CORRUPT or type(exc) is sqlite3.DatabaseError)


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
        self.path = path = self.dir / name
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
                self.upgrade()
            self.has_crc = any(r[1] == "crc" for r in self.db.execute("PRAGMA table_info(vectors)"))
        except sqlite3.DatabaseError as exc:
            raise DeepretError(f"cannot open the catalogue {path} ({exc}): it is not an index or it is "
                               f"damaged; {repair_hint(self.dir)}") from None

    def close(self) -> None:
        self.db.close()

    def damaged(self, what: str) -> DeepretError:
        return DeepretError(f"the catalogue {self.path} is damaged ({what}): {repair_hint(self.dir)}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn SQLite's errors on a damaged file into a DeepretError naming it and the repair."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise self.damaged(str(exc)) from None
            raise

    def upgrade(self) -> None:
        """Give a catalogue written before descriptor checksums its `crc` column (a writer's step)."""
        if any(r[1] == "crc" for r in self.db.execute("PRAGMA table_info(vectors)")):
            return
        with self.write() as db:
            db.execute("ALTER TABLE vectors ADD COLUMN crc INTEGER")
            db.executemany("UPDATE vectors SET crc = ? WHERE seq = ?",
                           [(vector_crc(v), s) for s, v in db.execute("SELECT seq, vec FROM vectors").fetchall()])
        self.has_crc = True

    def quick_check(self, tables: tuple[str, ...] = ("meta", "files", "tombstones")) -> list[str]:
        """SQLite's structural check of these tables (PRAGMA quick_check): the problems found, [] if none."""
        problems = []
        with self.guard():
            for table in tables:
                problems += [" ".join(r[0].split()) for r in self.db.execute(f"PRAGMA quick_check({table})")
                             if r[0] != "ok"]
        return problems

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on an exception)."""
        with self.guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot: everything read inside sees the same committed state."""
        with self.guard():
            self.db.execute("BEGIN")
            try:
                yield self.db
            finally:
                if self.db.in_transaction:
                    self.db.execute("COMMIT")

    # --- meta
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return self._value(key, row[0]) if row else default

    def all_meta(self) -> dict[str, Any]:
        return {k: self._value(k, v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def _value(self, key: str, text: Any) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            raise self.damaged(f"its setting {key!r} cannot be read") from None

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
        blobs = [(int(i), v.tobytes()) for i, v in zip(ids, vectors)]
        db.executemany("INSERT OR REPLACE INTO vectors (id, vec, crc) VALUES (?, ?, ?)",
                       [(i, b, vector_crc(b)) for i, b in blobs])

    def vectors(self, dim: int, after_seq: int = 0, upto_seq: int | None = None,
                on_damage: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, descriptors (n, dim), last seq) of the vectors with after_seq < seq <= upto_seq, each
        checked against its checksum: a damaged one raises (a DeepretError naming the repair), or with
        `on_damage` is left out and its id passed to it."""
        crc = "crc" if self.has_crc else "NULL"
        sql, args = f"SELECT seq, id, vec, {crc} FROM vectors WHERE seq > ?", [after_seq]
        if upto_seq is not None:
            sql, args = sql + " AND seq <= ?", [after_seq, upto_seq]
        with self.guard():
            rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        last = int(rows[-1][0]) if rows else after_seq
        rows = [r for r in rows if self._intact(r[1], r[2], r[3], dim, on_damage)]
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), last
        ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        x = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, x, last

    def _intact(self, image_id, blob, crc, dim: int, on_damage: Callable[[int], None] | None) -> bool:
        if isinstance(blob, bytes) and len(blob) == 4 * dim and (crc is None or vector_crc(blob) == crc):
            return True
        if on_damage is None:
            raise self.damaged(f"the stored descriptor of image id {image_id} differs from its checksum")
        on_damage(int(image_id))
        return False

    def vector(self, image_id: int, dim: int) -> np.ndarray | None:
        """The checked descriptor of one image (None if it has none)."""
        crc = "crc" if self.has_crc else "NULL"
        with self.guard():
            row = self.db.execute(f"SELECT id, vec, {crc} FROM vectors WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            return None
        self._intact(*row, dim, None)
        return np.frombuffer(row[1], dtype=np.float32).copy()

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
