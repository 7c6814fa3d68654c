"""Updating an index: what changed in its folder (or in the files given), extracted first and then
committed in one transaction (Index.update and Index.add_files run the steps)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deepret.index.build import ExtractJob, Rows, record
from deepret.index.catalogue import NAME, Catalogue, name_param
from deepret.index.checks import fault_point
from deepret.index.photos import UNREADABLE, by_count, photo_in, scan


@dataclass
class UpdateReport:
    """What an update or add_files changed."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready: {"added", "changed", "removed", "skipped": [{"path", "reason"}], "seconds"}."""
        return asdict(self)


@dataclass
class Changes:
    """An update's work: extract `rows` (fresh id, path) of new and changed files, drop the ids in `drop`
    (changed and removed files), store `not_indexed` (the rescan's counts of files not indexed, where
    they changed)."""

    rows: Rows
    stats: dict[str, tuple[int, int]]  # path: (size, mtime_ns) of each file in rows
    drop: list[int]
    report: UpdateReport
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    vectors: np.ndarray | None = None
    skipped: dict[int, str] = field(default_factory=dict)
    not_indexed: dict[str, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.rows or self.drop) or self.not_indexed is not None

    def extract(self, job: ExtractJob) -> None:
        """Describe the new and changed files (before anything is committed)."""
        vectors = [np.zeros((0, job.net.dim), np.float32)]
        for _, (sizes, v, skipped) in job.chunks(self.rows, "update"):
            self.sizes.update(sizes)
            self.skipped.update(skipped)
            vectors.append(v)
        self.vectors = np.concatenate(vectors)
        fault_point("after-extract")
        paths = dict(self.rows)
        self.report.skipped = [{"path": paths[i], "reason": r} for i, r in sorted(self.skipped.items())]

    def commit(self, db) -> None:
        """All the changes, in the caller's write transaction."""
        Catalogue.remove(db, self.drop)
        db.executemany(f"INSERT INTO files (id, path, size, mtime_ns) VALUES (?, {NAME}, ?, ?)",
                       [(i, name_param(p), *self.stats[p]) for i, p in self.rows])
        record(db, self.rows, self.sizes, self.vectors, self.skipped)
        if self.not_indexed is not None:
            Catalogue.set_meta(db, not_indexed=self.not_indexed)
        Catalogue.bump(db)


def find_changes(root: Path, known: dict[str, tuple[int, int, int, str]], next_id: int,
                 paths: Sequence[str | Path] | None, exclude: Path, counted: dict[str, int] | None = None) -> Changes:
    """What to do to bring the catalogue's files (`known`, see Catalogue.files) in line with the folder
    (paths None; `exclude`: the index folder; `counted`: the stored counts of files not indexed) or with
    the given files (inside root); new rows get ids from `next_id` on."""
    not_indexed = None
    if paths is None:
        others: dict[str, int] = {}
        current = scan(root, exclude=exclude, not_indexed=others)
        gone = [known[p][0] for p in known if p not in current]
        not_indexed = by_count(others) if others != counted else None
    else:
        current, gone = {}, []
        for p in paths:
            rel = photo_in(root, Path(p))
            try:
                st = (root / rel).stat()
                current[rel] = (st.st_size, st.st_mtime_ns)
            except OSError:  # gone or unreadable since the check: skipped with its reason
                current[rel] = UNREADABLE
    todo = {p: sm for p, sm in current.items()
            if p not in known or known[p][1:3] != sm or known[p][3] == "pending"}
    changed = [known[p][0] for p in todo if p in known]
    report = UpdateReport(added=len(todo) - len(changed), changed=len(changed), removed=len(gone))
    return Changes([(next_id + j, p) for j, p in enumerate(todo)], todo, gone + changed, report,
                   not_indexed=not_indexed)
