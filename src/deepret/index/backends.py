"""Where an index's vectors are searched: local FAISS files or a Milvus collection.

Both implement `VectorBackend`: `publish` (writer: make the backend reflect the catalogue),
`refresh` (reader: pick up committed changes), `search`, `bytes_per_vector`. The catalogue keeps
every raw descriptor, so a backend can always be rebuilt from it.

FAISS: `vectors-<generation>.faiss` holds the vectors up to a catalogue `seq`; vectors appended
later (the delta) are added in memory when a reader loads it, and removed ids (tombstones) are
filtered from results. An update therefore appends rows to the catalogue and never rewrites or
re-reads the vectors in the file; a new file is written (from the stored descriptors, with the
trained quantizer kept in `trained.faiss`) only when the delta or the tombstones grow past a
fraction of it. The pointer to the current file is catalogue meta, switched in one transaction,
together with the file's checksum record (deepret.index.checks), checked when a reader loads it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

from deepret.errors import DeepretError
from deepret.index.catalogue import Catalogue
from deepret.index.checks import check_file, fault_point, file_record, repair_hint
from deepret.vectors import VectorIndex

_VECTOR_FILE = re.compile(r"vectors-(\d+)\.faiss")
REBUILD_FRACTION = 0.2  # delta + tombstones above this fraction of the file's vectors: write a new file


class VectorBackend(Protocol):
    name: str

    def publish(self, cat: Catalogue, train: np.ndarray | None = None, force: bool = False) -> None: ...
    def refresh(self, cat: Catalogue) -> None: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def bytes_per_vector(self) -> float: ...
    def close(self) -> None: ...


def open_backend(cat: Catalogue) -> VectorBackend:
    """The backend an index was built with (catalogue meta 'backend', 'uri')."""
    meta = cat.all_meta()
    if meta.get("backend", "faiss") == "milvus":
        from deepret.index.milvus import MilvusBackend

        return MilvusBackend(meta["uri"], meta["collection"], meta["dim"])
    return FaissBackend(cat.dir, meta["factory"], meta["dim"])


class FaissBackend:
    """A FAISS file plus the catalogue's delta, searched in memory."""

    name = "faiss"

    def __init__(self, index_dir: Path, factory: str, dim: int) -> None:
        self.dir, self.factory, self.dim = Path(index_dir), factory, int(dim)
        self.vi: VectorIndex | None = None
        self.generation, self.seq = -1, 0
        self.dead = np.zeros(0, np.int64)

    # --- writer
    def publish(self, cat: Catalogue, train: np.ndarray | None = None, force: bool = False) -> None:
        """Write a new vector file from the stored descriptors if forced or the delta is large."""
        base = cat.meta("base")
        if not force and base is not None:
            delta = cat.last_seq() - base["seq"]
            removed = len(cat.tombstones())
            if delta + removed <= REBUILD_FRACTION * max(base["count"], 1):
                return
        with cat.read():
            ids, x, seq = cat.vectors(self.dim)
            dead = cat.tombstones()
            trained_record = cat.meta("trained")
        vi, trained_record = self._empty_trained(x if train is None else train, trained_record, cat.dir)
        if len(ids):
            vi.add(x, ids)
        on_disk = {int(m.group(1)): p for p in self.dir.glob("vectors-*.faiss") if (m := _VECTOR_FILE.fullmatch(p.name))}
        previous = base["generation"] if base else 0
        generation = max([previous, *on_disk]) + 1  # never a name a reader may hold: also after a repair
        name = f"vectors-{generation}.faiss"
        vi.save(self.dir / name)
        record = file_record(self.dir / name)
        fault_point("after-vector-save")
        with cat.write() as db:
            db.executemany("DELETE FROM tombstones WHERE id = ?", [(int(i),) for i in dead])
            Catalogue.set_meta(db, base={"file": name, "seq": seq, "generation": generation, "count": len(ids),
                                         **record})
            if trained_record is not None:
                Catalogue.set_meta(db, trained=trained_record)
            Catalogue.bump(db)
        fault_point("after-base-commit")
        for number, old in on_disk.items():  # keep this file and the previous one for readers
            if number != previous:
                old.unlink(missing_ok=True)

    def _empty_trained(self, train: np.ndarray, record: dict | None,
                       index_dir: Path) -> tuple[VectorIndex, dict | None]:
        """An empty index with trained quantizers: from trained.faiss (checked against its `record`),
        else trained now and kept; with the record of trained.faiss to store."""
        trained = self.dir / "trained.faiss"
        vi = VectorIndex(self.factory, self.dim)
        if vi.is_trained:
            return vi, None
        if trained.is_file():
            check_file(trained, record, index_dir)
            return VectorIndex.load(trained, self.factory), record or file_record(trained)
        vi.train(train)
        vi.save(trained)
        return vi, file_record(trained)

    # --- reader
    def refresh(self, cat: Catalogue) -> None:
        """Load the current file if it changed (checked: deepret.index.checks), then add the vectors
        committed since."""
        missing = None
        for _attempt in range(5):
            with cat.read():
                base = cat.meta("base")
                if base is None:
                    raise DeepretError(f"index {cat.dir} has no vector file yet: run `deepret index build` "
                                       "again to finish it")
                dead = cat.tombstones()
                if base["generation"] != self.generation:
                    ids, x, seq = cat.vectors(self.dim, after_seq=base["seq"])
                else:
                    ids, x, seq = cat.vectors(self.dim, after_seq=self.seq)
            if base["generation"] != self.generation:
                path = self.dir / base["file"]
                if not path.exists():
                    if missing == base["generation"]:  # the pointer did not move: gone, not replaced
                        raise DeepretError(f"the vector file {path} of index {cat.dir} is missing: "
                                           f"{repair_hint(cat.dir)} (it rebuilds it from the catalogue)")
                    missing = base["generation"]
                    continue  # replaced by two newer files meanwhile: read the pointer again
                vi = self._load(path, base if "sha256" in base else None, cat.dir)
                self.vi, self.generation = vi, base["generation"]
            if len(ids):
                self.vi.add(x, ids)
            self.seq = max(seq, base["seq"]) if len(ids) else max(self.seq, base["seq"])
            self.dead = dead
            return
        raise DeepretError(f"index {cat.dir} changes too fast to be read: try again")

    def _load(self, path: Path, record: dict | None, index_dir: Path) -> VectorIndex:
        """The vector file, after its cheap check; a file FAISS cannot read names the repair too."""
        check_file(path, record, index_dir)
        try:
            vi = VectorIndex.load(path, self.factory)
        except DeepretError:
            raise DeepretError(f"{path} is damaged (FAISS cannot read it): {repair_hint(index_dir)}") from None
        if record is not None and vi.ntotal != record["count"]:
            raise DeepretError(f"{path} is damaged (it holds {vi.ntotal} vectors, {record['count']} written): "
                               f"{repair_hint(index_dir)}")
        return vi

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first, removed ids left out (id -1 where fewer)."""
        scores, ids = self.vi.search(queries, k + len(self.dead))
        return _drop_dead(scores, ids, self.dead, k)

    def set_params(self, params: str) -> None:
        self.vi.set_params(params)

    def bytes_per_vector(self) -> float:
        return self.vi.bytes_per_vector() if self.vi is not None else float("nan")

    def close(self) -> None:
        self.vi = None


def _drop_dead(scores: np.ndarray, ids: np.ndarray, dead: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first k results per row whose id is not in `dead` (pad with -1 / -inf)."""
    if len(dead) == 0 and ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    out_s = np.full((len(ids), k), -np.inf, np.float32)
    out_i = np.full((len(ids), k), -1, np.int64)
    for q in range(len(ids)):
        keep = (ids[q] >= 0) & ~np.isin(ids[q], dead)
        s, i = scores[q][keep][:k], ids[q][keep][:k]
        out_s[q, :len(s)], out_i[q, :len(i)] = s, i
    return out_s, out_i
