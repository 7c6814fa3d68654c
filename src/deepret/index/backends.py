"""Where an index's vectors are searched: local FAISS files or a Milvus collection.

Both implement `VectorBackend`: `publish` (writer: make the backend reflect the catalogue),
`refresh` (reader: pick up committed changes), `search`, `bytes_per_vector`. The catalogue keeps
every raw descriptor, so a backend can always be rebuilt from it.

FAISS: `vectors-<generation>.faiss` holds the vectors up to a catalogue `seq`; vectors appended
later (the delta) are added in memory when a reader loads it, and removed ids (tombstones) are
filtered from results. An update therefore appends rows to the catalogue and never rewrites or
re-reads the vectors in the file; a new file is written (from the stored descriptors, with the
trained quantizer kept in `trained.faiss`) only when the delta or the tombstones grow past a
fraction of it. The pointer to the current file is catalogue meta, switched in one transaction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from deepret.errors import DeepretError
from deepret.index.catalogue import Catalogue
from deepret.vectors import VectorIndex

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
        vi = self._empty_trained(x if train is None else train)
        if len(ids):
            vi.add(x, ids)
        generation = (base["generation"] + 1) if base else 1
        name = f"vectors-{generation}.faiss"
        vi.save(self.dir / name)
        with cat.write() as db:
            db.executemany("DELETE FROM tombstones WHERE id = ?", [(int(i),) for i in dead])
            Catalogue.set_meta(db, base={"file": name, "seq": seq, "generation": generation, "count": len(ids)})
            Catalogue.bump(db)
        for old in self.dir.glob("vectors-*.faiss"):  # keep this file and the previous one for readers
            if int(old.stem.split("-")[1]) < generation - 1:
                old.unlink(missing_ok=True)

    def _empty_trained(self, train: np.ndarray) -> VectorIndex:
        """An empty index with trained quantizers: from trained.faiss, else trained now and kept."""
        trained = self.dir / "trained.faiss"
        vi = VectorIndex(self.factory, self.dim)
        if vi.is_trained:
            return vi
        if trained.is_file():
            return VectorIndex.load(trained, self.factory)
        vi.train(train)
        vi.save(trained)
        return vi

    # --- reader
    def refresh(self, cat: Catalogue) -> None:
        """Load the current file if it changed, then add the vectors committed since."""
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
                try:
                    vi = VectorIndex.load(self.dir / base["file"], self.factory)
                except DeepretError:
                    if not (self.dir / base["file"]).exists():
                        continue  # replaced by two newer files meanwhile: read the pointer again
                    raise
                self.vi, self.generation = vi, base["generation"]
            if len(ids):
                self.vi.add(x, ids)
            self.seq = max(seq, base["seq"]) if len(ids) else max(self.seq, base["seq"])
            self.dead = dead
            return
        raise DeepretError(f"index {cat.dir} changes too fast to be read: try again")

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
