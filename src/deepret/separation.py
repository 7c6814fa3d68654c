"""How well descriptors separate labelled groups (landmarks), measured in descriptor space.

All measures use cosine similarity on the rows of X (N, D) and need no training:
* `silhouette`: the mean silhouette coefficient of the labels (scikit-learn, cosine distance):
  near 1 for tight, well separated groups, near 0 for labels unrelated to the geometry.
* `knn_accuracy`: leave-one-out k-NN accuracy (%): each image takes the plurality label of its k
  nearest other images (ties: the label of the nearest tied neighbour).
* `label_map`: retrieval mAP (%) within the set: each image queries all the others, positives are
  the images of its label (the validation score of bench/study_sweep.py).
* `separation`: the first two on the labelled images, and for label None ("unlabelled") how well
  labelled and unlabelled images separate (the same two measures on the labelled/unlabelled split).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepret.errors import DeepretError


def _unit_rows(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise DeepretError(f"descriptors must be a non-empty (N, D) array, got shape {X.shape}")
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _codes(labels: Sequence[Any], n: int) -> np.ndarray:
    if len(labels) != n:
        raise DeepretError(f"{len(labels)} labels for {n} descriptors: give one label per row")
    _, codes = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
    return codes


def silhouette(X: Any, labels: Sequence[Any]) -> float | None:
    """Mean cosine silhouette of `labels`; None when it is undefined (fewer than 2 labels, or as
    many labels as images)."""
    X = _unit_rows(X)
    codes = _codes(labels, len(X))
    if not 2 <= len(set(codes.tolist())) <= len(X) - 1:
        return None
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(X, codes, metric="cosine"))


def knn_accuracy(X: Any, labels: Sequence[Any], k: int = 5) -> float | None:
    """Leave-one-out k-NN accuracy (%) of `labels` under cosine similarity; None for fewer than 2 images."""
    X = _unit_rows(X)
    codes = _codes(labels, len(X))
    if len(X) < 2:
        return None
    k = max(1, min(k, len(X) - 1))
    sims = X @ X.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    right = 0
    for i, neighbours in enumerate(order):
        votes = codes[neighbours]
        counts = np.bincount(votes)
        tied = np.flatnonzero(counts == counts.max())
        guess = next(v for v in votes if v in tied)  # neighbours are nearest first
        right += int(guess == codes[i])
    return 100.0 * right / len(X)


def label_map(X: Any, labels: Sequence[Any]) -> float | None:
    """mAP (%) of every image querying the others, positives = same label; images without another of
    their label are not queries. None when no image has a positive."""
    X = _unit_rows(X)
    codes = _codes(labels, len(X))
    sims = X @ X.T
    aps = []
    for i in range(len(X)):
        others = np.delete(np.arange(len(X)), i)
        relevant = codes[others[np.argsort(-sims[i, others], kind="stable")]] == codes[i]
        if relevant.any():
            hits = np.cumsum(relevant)
            aps.append(float((hits[relevant] / (np.flatnonzero(relevant) + 1)).mean()))
    return 100.0 * float(np.mean(aps)) if aps else None


def separation(X: Any, labels: Sequence[str | None], k: int = 5) -> dict[str, Any]:
    """Silhouette and k-NN accuracy of the labels of the labelled images (label not None), and of the
    labelled/unlabelled split over all images (None where there are no unlabelled images)."""
    X = _unit_rows(X)
    _codes(labels, len(X))
    labelled = np.array([lab is not None for lab in labels], dtype=bool)
    kept = [lab for lab in labels if lab is not None]
    out: dict[str, Any] = {"images": len(X), "labelled": int(labelled.sum()), "k": k,
                           "silhouette": silhouette(X[labelled], kept) if labelled.any() else None,
                           "knn_accuracy": knn_accuracy(X[labelled], kept, k) if labelled.any() else None,
                           "unlabelled_silhouette": None, "unlabelled_knn_accuracy": None}
    if labelled.any() and not labelled.all():
        split = ["labelled" if x else "unlabelled" for x in labelled]
        out["unlabelled_silhouette"] = silhouette(X, split)
        out["unlabelled_knn_accuracy"] = knn_accuracy(X, split, k)
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in out.items()}
