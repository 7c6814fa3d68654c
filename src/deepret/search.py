"""Nearest-neighbour search over L2-normalised descriptors (inner product = cosine similarity)."""
from __future__ import annotations

import numpy as np


def similarities(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n_db, n_q) cosine similarities of L2-normalised rows."""
    return db @ queries.T


def rank_database(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n_db, n_q) database indices per query, most similar first (revisitop's `ranks` layout)."""
    return np.argsort(-similarities(db, queries), axis=0, kind="stable")
