"""Training tuples from class labels: (query, positive, hardest negatives from a random pool)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepret.datasets import LabelledImages


@dataclass
class Tuple:
    """Indices into the training images, and the descriptor distances at mining time."""

    query: int
    positive: int
    negatives: list[int]
    d_positive: float
    d_negatives: list[float]

    def images(self) -> list[int]:
        return [self.query, self.positive, *self.negatives]


def mine_tuples(data: LabelledImages, describe: Callable[[list[int]], np.ndarray], rng: np.random.Generator,
                n_queries: int, n_negatives: int, pool_size: int) -> list[Tuple]:
    """One epoch's tuples. Queries are drawn at random, each with a random positive of its class;
    negatives are the pool images closest to the query under the current network (`describe`
    maps image indices to L2-normalised descriptors), at most one per class, none of the query's.
    The pool gets one random image of each class it lacks, so every tuple has the same length."""
    labels = np.asarray(data.labels)
    by_class = {c: np.asarray(ix) for c, ix in data.by_class().items()}
    n_neg = min(n_negatives, len(by_class) - 1)
    queries = rng.choice(len(data), size=min(n_queries, len(data)), replace=False)
    positives = [int(rng.choice(by_class[labels[q]][by_class[labels[q]] != q])) for q in queries]
    pool = rng.choice(len(data), size=min(pool_size, len(data)), replace=False)
    missing = sorted(set(by_class) - set(labels[pool].tolist()))  # every class must be able to give a negative
    pool = np.concatenate([pool, [int(rng.choice(by_class[c])) for c in missing]]).astype(int)
    wanted = sorted(set(queries.tolist()) | set(positives) | set(pool.tolist()))
    row = {i: r for r, i in enumerate(wanted)}
    desc = describe(wanted)
    pool_desc = desc[[row[i] for i in pool]]
    tuples = []
    for q, p in zip(queries.tolist(), positives):
        candidates = pool[np.argsort(-(pool_desc @ desc[row[q]]), kind="stable")]
        negatives, used = [], {labels[q]}
        for n in candidates:
            if labels[n] not in used:
                negatives.append(int(n))
                used.add(labels[n])
            if len(negatives) == n_neg:
                break
        def dist(a: int, q: int = q) -> float:
            return float(np.linalg.norm(desc[row[q]] - desc[row[a]]))

        tuples.append(Tuple(q, p, negatives, dist(p), [dist(n) for n in negatives]))
    return tuples

