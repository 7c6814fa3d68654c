"""Nearest-neighbour search over L2-normalised descriptors (inner product = cosine similarity)."""
from __future__ import annotations

import numpy as np

from deepret.errors import DeepretError


def similarities(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n_db, n_q) cosine similarities of L2-normalised rows."""
    return db @ queries.T


def rank(scores: np.ndarray) -> np.ndarray:
    """(n_db, n_q) similarities -> (n_db, n_q) database indices per query, most similar first
    (revisitop's `ranks` layout; ties: lower index first). `rank(similarities(db, queries))` ranks
    a database for its queries."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise DeepretError(f"similarity matrix has shape {scores.shape}: expected 2-D (n_db, n_queries)")
    return np.argsort(-scores, axis=0, kind="stable")
