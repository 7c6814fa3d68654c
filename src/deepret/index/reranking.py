"""Re-ranking over an index: the database side (DBA vectors, diffusion graph) computed once per
index state and kept in the index folder, so a searcher pays only the per-query part.

`IndexReranking.get(spec, version)` returns a fitted `deepret.rerank.Reranker` and the image ids of
its rows. The fitted state lives in `DIR/rerank/<spec hash>.npz` together with the catalogue version
it was computed for; after an update (a new version) it is recomputed on the next re-ranked query.

No lock is held while a fit is computed: one thread (the first re-ranked query after the update)
computes it, and meanwhile the other re-ranked searches for that spec go on with the previous fit
(the catalogue as it was: images added since are missing from their results, removed ones are
dropped by the caller's path lookup); only a spec with no fit at all yet makes them wait for it.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepret.errors import DeepretError
from deepret.fileio import atomic_write_bytes
from deepret.rerank import Reranker, parse_rerank


class IndexReranking:
    """Fitted re-rankers of one index, in memory and on disk, keyed by spec and catalogue version."""

    def __init__(self, index_dir: Path, snapshot: Callable[[], tuple[int, np.ndarray, np.ndarray]]) -> None:
        self.dir = Path(index_dir) / "rerank"
        self.snapshot = snapshot  # () -> (catalogue version, ids, descriptors), read in one snapshot
        self.lock = threading.Lock()  # guards `fitted` and `_computing` only, never held during a fit
        self.fitted: dict[str, tuple[int, np.ndarray, Reranker]] = {}
        self._computing: dict[str, threading.Event] = {}  # spec -> set when its fit in progress ends

    def get(self, spec: str, version: int) -> tuple[Reranker, np.ndarray]:
        """(fitted re-ranker, ids of its rows) for `spec` at catalogue `version` (or a later one); while
        another thread computes that fit, the previous fit of `spec` if there is one."""
        reranker = parse_rerank(spec)  # a bad spec fails here, before any work
        key = reranker.spec
        while True:
            with self.lock:
                cached = self.fitted.get(key)
                if cached is not None and cached[0] >= version:  # versions only grow
                    return cached[2], cached[1]
                done = self._computing.get(key)
                if done is None:
                    done = self._computing[key] = threading.Event()
                    break  # this thread computes it
                if cached is not None:
                    return cached[2], cached[1]  # being refit by another thread: the previous fit meanwhile
            done.wait()  # no fit yet: wait for the one in progress (then look again: it may have failed)
        try:
            fitted_version, ids = self._compute(reranker, version)
            with self.lock:
                self.fitted[key] = (fitted_version, ids, reranker)
            return reranker, ids
        finally:
            with self.lock:
                del self._computing[key]
            done.set()

    def _compute(self, reranker: Reranker, version: int) -> tuple[int, np.ndarray]:
        """Load the state stored for `version`, or fit on a fresh snapshot (and store it)."""
        ids, state = self._load(reranker.spec, version)
        if state is not None:
            try:
                reranker.load_state(state)
                return version, ids
            except DeepretError:  # another format or spec: fit again
                pass
        version, ids, x = self.snapshot()
        reranker.fit(x)
        self._save(reranker, ids, version)
        return version, ids

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
