"""Vector search by FAISS factory string over L2-normalised descriptors (inner product = cosine).

`VectorIndex("IVF1024,PQ32", dim)` wraps `faiss.index_factory` behind a small interface: `train`,
`add` (with int64 ids), `search`, `save`/`load`, `bytes_per_vector`. Factories that need training
check the number of training vectors first and say which factories fit instead of failing inside
FAISS. `factory_ranks` turns any factory into a revisitop ranking for evaluation.
"""
from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from deepret.errors import DeepretError
from deepret.fileio import atomic_path

EXACT = "Flat"
EXAMPLE_FACTORIES = ("Flat", "HNSW32", "IVF1024,Flat", "IVF1024,PQ32", "OPQ32,IVF1024,PQ32")


def min_train_vectors(factory: str, dim: int | None = None) -> int:
    """Training vectors a factory needs: k-means needs at least as many points as centroids
    (IVF<n>: n, PQ<m>x<b>: 2**b, default b = 8); OPQ's rotation at least `dim` (FAISS's
    OPQMatrix.train corrupts the heap and kills the process on fewer, faiss-cpu 1.15); 0 for
    factories without training."""
    need = 0
    if dim is not None:
        d = dim
        for part in factory.split(","):  # OPQ's input dimension: `dim`, or what a PCA before it keeps
            if part.startswith("OPQ"):
                need = max(need, d)
            reduced = re.match(r"(?:PCA[A-Z]*|OPQ\d+_)(\d+)", part)
            d = int(reduced.group(1)) if reduced else d
    for n in re.findall(r"IVF(\d+)", factory):
        need = max(need, int(n))
    for _m, bits in re.findall(r"(?<![O])PQ(\d+)(?:x(\d+))?", factory):
        need = max(need, 2 ** int(bits or 8))
    return need


def fitting_factories(n_train: int, dim: int) -> list[str]:
    """Example factories (scaled down to `n_train` vectors) that can be trained on n_train vectors."""
    fits = ["Flat", "HNSW32"]
    nlist = 1 << max(0, int(np.log2(max(1, n_train // 39))))  # FAISS wants ~39 points per centroid
    if n_train >= 1 and nlist >= 1:
        fits.append(f"IVF{nlist},Flat")
    if n_train >= 256:
        m = _pq_subquantizers(dim)
        fits.append(f"IVF{nlist},PQ{m}")
        if n_train >= dim:
            fits.append(f"OPQ{m},IVF{nlist},PQ{m}")
    return fits


def _pq_subquantizers(dim: int, target: int = 32) -> int:
    m = min(target, dim)
    while dim % m:
        m -= 1
    return m


class VectorIndex:
    """A FAISS index named by its factory string, inner-product metric, with int64 ids."""

    def __init__(self, factory: str, dim: int, index: faiss.Index | None = None) -> None:
        self.factory, self.dim = factory, int(dim)
        if index is None:
            try:
                index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                raise DeepretError(f"FAISS factory {factory!r} is not valid for {dim}-d vectors "
                                   f"({_first_line(exc)}): try one of {', '.join(EXAMPLE_FACTORIES)}") from exc
            if not isinstance(index, faiss.IndexIDMap) and not _has_own_ids(index):
                index = faiss.IndexIDMap2(index)
        self.index = index

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, x: np.ndarray) -> None:
        """Train the quantizers on `x` (N, dim); a clear error when N is too small for the factory."""
        if self.is_trained:
            return
        x = _as_f32(x, self.dim)
        need = min_train_vectors(self.factory, self.dim)
        if len(x) < need:
            raise DeepretError(
                f"factory {self.factory!r} needs at least {need} training vectors, got {len(x)}: "
                f"with {len(x)} vectors use one of {', '.join(fitting_factories(len(x), self.dim))}, "
                "or train on a larger collection (--train-on DIR)")
        try:
            self.index.train(x)
        except RuntimeError as exc:
            raise DeepretError(f"training factory {self.factory!r} on {len(x)} vectors failed "
                               f"({_first_line(exc)})") from exc

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add rows of `x` under `ids` (int64), training first on `x` if the index is untrained."""
        x = _as_f32(x, self.dim)
        if not self.is_trained:
            self.train(x)
        self.index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids`; returns how many were removed (DeepretError if the factory cannot remove)."""
        try:
            return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))
        except RuntimeError as exc:
            raise DeepretError(f"factory {self.factory!r} cannot remove vectors ({_first_line(exc)}): "
                               "rebuild the index from the stored descriptors") from exc

    def set_params(self, params: str) -> None:
        """Search-time parameters in FAISS's ParameterSpace syntax, e.g. 'nprobe=16' or 'efSearch=64'."""
        if params:
            try:
                faiss.ParameterSpace().set_index_parameters(self.index, params)
            except RuntimeError as exc:
                raise DeepretError(f"search parameters {params!r} do not fit factory {self.factory!r} "
                                   f"({_first_line(exc)})") from exc

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first; missing results have id -1 and score -inf."""
        q = _as_f32(queries, self.dim)
        k = max(1, min(int(k), max(1, self.ntotal)))
        scores, ids = self.index.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def bytes_per_vector(self) -> float:
        """Serialized size of the index divided by its vector count (ids, graph links and the trained
        quantizers' share included), computed from the index's structure: codes and ids per vector plus
        the fixed tables (centroids, codebooks, rotations) over the count, without serialising the
        vectors. Index types not accounted for are serialised once per vector count."""
        n = self.ntotal
        if n == 0:
            return float("nan")
        size = _footprint(self.index, n)
        if size is None:
            cached = getattr(self, "_serialized", None)
            if cached is None or cached[0] != n:
                self._serialized = cached = (n, len(faiss.serialize_index(self.index)))
            return cached[1] / n
        per_vector, fixed = size
        return per_vector + fixed / n

    def save(self, path: str | Path) -> Path:
        """Write the index atomically."""
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, factory: str, mmap: bool = False) -> VectorIndex:
        """Read an index written by `save` (mmap: map it read-only instead of reading it)."""
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise DeepretError(f"cannot read vector index {path} ({_first_line(exc)}): rebuild the index") from exc
        return cls(factory, index.d, index)


def factory_ranks(db: np.ndarray, queries: np.ndarray, factory: str, train: np.ndarray | None = None,
                  params: str = "") -> np.ndarray:
    """(n_db, n_q) database indices per query, best first, searched with `factory` (revisitop's
    `ranks` layout). Images an approximate index does not return are ranked last, in index order."""
    n = len(db)
    vi = VectorIndex(factory, db.shape[1])
    vi.train(db if train is None else train)
    vi.add(db, np.arange(n))
    vi.set_params(params)
    _, ids = vi.search(queries, n)
    ranks = np.empty((n, len(queries)), dtype=np.int64)
    for q in range(len(queries)):
        found = ids[q][ids[q] >= 0]
        rest = np.setdiff1d(np.arange(n), found, assume_unique=False)
        ranks[:, q] = np.concatenate([found, rest])[:n]
    return ranks


def _footprint(index: faiss.Index, n: int) -> tuple[float, int] | None:
    """(bytes per vector, fixed bytes) of `index` holding n vectors, as FAISS serialises it; None for
    an index type not accounted for here."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = _footprint(index.index, n)
        return None if inner is None else (inner[0] + 8, inner[1])  # an int64 id per vector
    if isinstance(index, faiss.IndexPreTransform):
        fixed = 0
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if not isinstance(vt, faiss.LinearTransform):
                return None
            fixed += 4 * (vt.A.size() + vt.b.size())
            if isinstance(vt, faiss.PCAMatrix):
                fixed += 4 * (vt.mean.size() + vt.eigenvalues.size() + vt.PCAMat.size())
        inner = _footprint(index.index, n)
        return None if inner is None else (inner[0], inner[1] + fixed)
    if isinstance(index, faiss.IndexIVF):
        quantizer = _footprint(index.quantizer, max(1, index.quantizer.ntotal))
        if quantizer is None:
            return None
        fixed = quantizer[0] * index.quantizer.ntotal + quantizer[1] + _tables(index)
        return index.code_size + 8, fixed  # codes and ids in the inverted lists
    if isinstance(index, faiss.IndexHNSW):
        storage = _footprint(index.storage, n)
        if storage is None:
            return None
        hnsw = index.hnsw  # neighbour links (int32), level (int32) and offset (uint64) of every vector
        return storage[0] + 4 * hnsw.neighbors.size() / n + 4 + 8, storage[1]
    if isinstance(index, faiss.IndexFlatCodes):  # Flat, PQ, SQ, LSH...: one code per vector
        return index.code_size, _tables(index)
    return None


def _tables(index: faiss.Index) -> int:
    """Bytes of a coding's trained tables: PQ codebooks, scalar-quantizer ranges."""
    fixed = 0
    if getattr(index, "pq", None) is not None:
        fixed += 4 * index.pq.centroids.size()
    if getattr(index, "sq", None) is not None:
        fixed += 4 * index.sq.trained.size()
    return fixed


def _has_own_ids(index: faiss.Index) -> bool:
    """IVF indexes store ids themselves; flat, HNSW and PQ-only indexes need an IDMap."""
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _as_f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    if x.shape[1] != dim:
        raise DeepretError(f"vectors of dimension {x.shape[1]} given to an index of dimension {dim}: "
                           "query with the index's own model")
    return x


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line.strip() for line in text if "Error" in line and "in " not in line[:3]), text[0] if text else "")
