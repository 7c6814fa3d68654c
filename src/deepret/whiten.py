"""Descriptor whitening learned after pooling: PCA whitening and Lw (Radenović et al.).

Both are scikit-learn style: `fit` then `transform(X) = l2n((X - mean_) @ projection_.T)` on numpy rows
(N, D). `as_linear()` gives the (matrix, bias) that `RetrievalNet.set_whitening` installs, so the network
reproduces `transform` exactly. Fitting runs in float64.

Shrinkage (both methods): every eigenvalue l of the covariance being whitened becomes
l + shrinkage * mean(l) before it is raised to -power, so shrinkage > 0 keeps singular or
ill-conditioned covariances usable; a direction of variance l then keeps variance
l / (l + shrinkage * mean(l)) (at power 0.5) instead of 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepret.errors import DeepretError

METHODS = ("pca", "lw")


def _l2n(Y: np.ndarray) -> np.ndarray:
    return Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)


def _as_rows(X: Any, what: str = "descriptors") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DeepretError(f"{what} must be a non-empty (N, D) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise DeepretError(f"{what} contain NaN or inf values: re-extract them")
    return X


def _eigh_desc(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors (columns, sign fixed: largest |entry| positive)."""
    values, vectors = np.linalg.eigh((C + C.T) / 2)
    values, vectors = values[::-1], vectors[:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return np.clip(values, 0.0, None), vectors * np.where(signs == 0, 1.0, signs)


def _scaling(values: np.ndarray, power: float, shrinkage: float, eps: float, what: str, advice: str) -> np.ndarray:
    """values ** -power after shrinkage; DeepretError if a kept eigenvalue is (numerically) zero."""
    if power == 0:
        return np.ones_like(values)
    shrunk = values + shrinkage * values.mean()
    if shrunk.min() <= eps * max(values.max(), np.finfo(float).tiny):
        raise DeepretError(f"the covariance of {what} is singular: {advice} or use shrinkage > 0 (e.g. shrinkage=0.1)")
    return shrunk ** -power


class Whitening:
    """Shared state and methods: `mean_` (D,), `projection_` (dim, D)."""

    method = ""

    def __init__(self, dim: int | None = None, power: float = 0.5, shrinkage: float = 0.0,
                 eps: float = 1e-10) -> None:
        if dim is not None and dim < 1:
            raise DeepretError(f"whitening dim must be a positive integer, got {dim}")
        if shrinkage < 0:
            raise DeepretError(f"shrinkage must be >= 0, got {shrinkage}")
        self.dim, self.power, self.shrinkage, self.eps = dim, float(power), float(shrinkage), float(eps)
        self.mean_: np.ndarray | None = None
        self.projection_: np.ndarray | None = None

    def _out_dim(self, D: int) -> int:
        if self.dim is not None and self.dim > D:
            raise DeepretError(f"whitening dim {self.dim} exceeds the descriptor dimension {D}")
        return self.dim or D

    def _check_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.projection_ is None or self.mean_ is None:
            raise DeepretError(f"{type(self).__name__} is not fitted: call fit first")
        return self.mean_, self.projection_

    def transform(self, X: Any, normalize: bool = True) -> np.ndarray:
        """(X - mean_) @ projection_.T, L2-normalised per row unless normalize=False."""
        mean, P = self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != P.shape[1]:
            raise DeepretError(f"descriptors of shape {X.shape} do not match the whitening input dim {P.shape[1]}")
        dtype = np.result_type(X.dtype, np.float32)
        Y = (X.astype(np.float64) - mean) @ P.T
        return (_l2n(Y) if normalize else Y).astype(dtype, copy=False)

    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(matrix (dim, D), bias (dim,)) float32 with matrix @ v + bias == projection_ @ (v - mean_)."""
        mean, P = self._check_fitted()
        return torch.from_numpy(P.astype(np.float32)), torch.from_numpy((-P @ mean).astype(np.float32))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (lists of floats)."""
        mean, P = self._check_fitted()
        return {"method": self.method, "dim": self.dim, "power": self.power, "shrinkage": self.shrinkage,
                "eps": self.eps, "mean": mean.tolist(), "projection": P.tolist()}

    @classmethod
    def fitted(cls, mean: Any, projection: Any) -> Whitening:
        """One fitted elsewhere, e.g. cirtorch's Lw: `mean` (D,) or (D, 1) ('m'), `projection` (dim, D) ('P')."""
        m, P = np.asarray(mean, dtype=np.float64).reshape(-1), np.asarray(projection, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != m.shape[0] or m.shape[0] == 0:
            raise DeepretError(f"a whitening needs a (dim, D) projection and a D-d mean, got shapes {P.shape} and "
                               f"{np.shape(mean)}")
        if not (np.isfinite(P).all() and np.isfinite(m).all()):
            raise DeepretError("the whitening's mean or projection holds NaN or inf values")
        w = cls(dim=P.shape[0])
        w.mean_, w.projection_ = m, P
        return w

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Whitening:
        """Rebuild a fitted whitening written by `to_dict`."""
        w = _class_for(d.get("method"))(dim=d["dim"], power=d["power"], shrinkage=d["shrinkage"], eps=d["eps"])
        w.mean_, w.projection_ = np.asarray(d["mean"], float), np.asarray(d["projection"], float)
        return w


class PCAWhitening(Whitening):
    """PCA whitening: P = diag((l + shrinkage*mean(l)) ** -power) @ top-`dim` eigenvectors.T of cov(X).

    power 0.5 whitens fully (identity covariance when shrinkage=0), power 0 is plain PCA rotation.
    Covariance uses the N-1 denominator (as np.cov and sklearn PCA).
    """

    method = "pca"

    def fit(self, X: Any) -> PCAWhitening:
        X = _as_rows(X)
        (N, D), k = X.shape, self._out_dim(X.shape[1])
        if k >= N:
            raise DeepretError(f"{N} descriptors cannot fit a {k}-d PCA whitening (need more than {k}): "
                               "give more descriptors or a smaller dim")
        mean = X.mean(axis=0)
        values, vectors = _eigh_desc(np.cov(X - mean, rowvar=False).reshape(D, D))
        scale = _scaling(values[:k], self.power, self.shrinkage, self.eps, f"{N} descriptors of dim {D}",
                         "use a smaller dim")
        self.mean_, self.projection_ = mean, scale[:, None] * vectors[:, :k].T
        return self


class LearnedWhitening(Whitening):
    """Lw (cirtorch `whitenlearn`): whiten matching-pair differences, then rotate by PCA of the set.

    m = mean of X[qidxs]; C = second moment of X[q] - X[p] (uncentred, as cirtorch, /n_pairs);
    P1 = C ** -1/2 (symmetric; shrinkage as documented above); then the eigenvectors (decreasing
    eigenvalue) of the second moment of (X - m) @ P1.T about m (/N); P = eigvecs[:, :dim].T @ P1.
    Pair differences get identity second moment through P1 and through P (dim = D, shrinkage 0).
    """

    method = "lw"

    def __init__(self, dim: int | None = None, shrinkage: float = 0.0, eps: float = 1e-10,
                 power: float = 0.5) -> None:
        super().__init__(dim=dim, power=power, shrinkage=shrinkage, eps=eps)

    def fit(self, X: Any, pairs: tuple[Sequence[int], Sequence[int]] | None = None) -> LearnedWhitening:
        """pairs = (qidxs, pidxs): equal-length index sequences into the rows of X."""
        X = _as_rows(X)
        (N, D), k = X.shape, self._out_dim(X.shape[1])
        q, p = _check_pairs(pairs, N)
        mean = X[q].mean(axis=0)
        diff = X[q] - X[p]
        values, vectors = _eigh_desc(diff.T @ diff / len(q))
        scale = _scaling(values, self.power, self.shrinkage, self.eps,
                         f"{len(q)} pair differences of dim {D}", f"add pairs (Lw needs {D} independent ones)")
        P1 = vectors @ (scale[:, None] * vectors.T)
        Z = (X - mean) @ P1.T
        _, rotation = _eigh_desc(Z.T @ Z / N)
        self.mean_, self.projection_ = mean, rotation[:, :k].T @ P1
        return self


def _class_for(method: Any) -> type[Whitening]:
    classes: dict[Any, type[Whitening]] = {"pca": PCAWhitening, "lw": LearnedWhitening}
    if method not in classes:
        raise DeepretError(f"unknown whitening method {method!r}: expected one of {', '.join(METHODS)}")
    return classes[method]


def _check_pairs(pairs: Any, N: int) -> tuple[np.ndarray, np.ndarray]:
    if pairs is None:
        raise DeepretError("Lw whitening needs matching pairs (qidxs, pidxs): use method 'pca' without pairs")
    try:
        q, p = (np.asarray(a) for a in pairs)
    except (TypeError, ValueError) as exc:
        raise DeepretError("pairs must be (qidxs, pidxs), two index sequences of equal length") from exc
    if q.ndim != 1 or q.shape != p.shape or len(q) == 0:
        raise DeepretError(f"pairs must be (qidxs, pidxs), two non-empty index sequences of equal length; "
                           f"got shapes {q.shape} and {p.shape}")
    if not (np.issubdtype(q.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        raise DeepretError("pair indices must be integers (rows of the descriptor array)")
    both = np.concatenate([q, p])
    bad = both[(both < 0) | (both >= N)]
    if bad.size:
        raise DeepretError(f"pair index {int(bad[0])} is out of range for {N} descriptors (valid: 0..{N - 1})")
    return q.astype(np.int64), p.astype(np.int64)


def fit_whitening(method: str, X: Any, pairs: tuple[Sequence[int], Sequence[int]] | None = None,
                  dim: int | None = None, **kw: Any) -> Whitening:
    """Fit 'pca' (PCAWhitening(dim, **kw).fit(X)) or 'lw' (LearnedWhitening(dim, **kw).fit(X, pairs))."""
    cls = _class_for(method)
    try:
        w = cls(dim=dim, **kw)
    except TypeError as exc:
        raise DeepretError(f"bad option for {method} whitening: {exc}") from exc
    return w.fit(X) if method == "pca" else w.fit(X, pairs)
