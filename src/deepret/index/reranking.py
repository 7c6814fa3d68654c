"""Re-ranking over an index: the database side (DBA vectors, diffusion graph) computed once per
index state and kept in the index folder, so a searcher pays only the per-query part.

`IndexReranking.get(spec)` returns a fitted `deepret.rerank.Reranker` and the image ids of its rows.
The fitted state lives in `DIR/rerank/<spec hash>.npz` together with the catalogue version it was
computed for; after an update (a new version) it is recomputed on the next re-ranked query.
"""
from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from deepret.fileio import atomic_write_bytes
from deepret.rerank import Reranker, parse_rerank


class IndexReranking:
    """Fitted re-rankers of one index, in memory and on disk, keyed by spec and catalogue version."""

    def __init__(self, index_dir: Path, snapshot: Callable[[], tuple[int, np.ndarray, np.ndarray]]) -> None:
        self.dir = Path(index_dir) / "rerank"
        self.snapshot = snapshot  # () -> (catalogue version, ids, descriptors), read in one snapshot
        self.lock = threading.Lock()
        self.fitted: dict[str, tuple[int, np.ndarray, Reranker]] = {}

    def get(self, spec: str, version: int) -> tuple[Reranker, np.ndarray]:
        """(fitted re-ranker, ids of its rows) for `spec` at catalogue `version`."""
        reranker = parse_rerank(spec)  # a bad spec fails here, before any work
        with self.lock:
            cached = self.fitted.get(reranker.spec)
            if cached is not None and cached[0] == version:
                return cached[2], cached[1]
            ids, state = self._load(reranker.spec, version)
            if state is not None:
                reranker.load_state(state)
            else:
                version, ids, x = self.snapshot()
                reranker.fit(x)
                self._save(reranker, ids, version)
            self.fitted[reranker.spec] = (version, ids, reranker)
            return reranker, ids

    def _file(self, spec: str) -> Path:
        return self.dir / f"{hashlib.sha1(spec.encode()).hexdigest()[:16]}.npz"

    def _load(self, spec: str, version: int) -> tuple[np.ndarray | None, dict | None]:
        path = self._file(spec)
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != version or str(z["spec"]) != spec:
                    return None, None
                return z["ids"], {k: z[k] for k in z.files if k not in ("version", "ids")}
        except (OSError, KeyError, ValueError):  # absent, stale format or damaged: fit again
            return None, None

    def _save(self, reranker: Reranker, ids: np.ndarray, version: int) -> None:
        buf = io.BytesIO()
        np.savez(buf, version=np.array(version), ids=ids, **reranker.state())
        atomic_write_bytes(self._file(reranker.spec), buf.getvalue(), fsync=False)  # a cache: refit if lost
