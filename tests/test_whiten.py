import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from deepret.errors import DeepretError
from deepret.whiten import LearnedWhitening, PCAWhitening, Whitening, fit_whitening


def correlated(n: int = 500, d: int = 32, seed: int = 0) -> np.ndarray:
    """Rows with a strongly non-isotropic covariance and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.logspace(0, -2, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def pair_data(n: int = 200, d: int = 16, seed: int = 1):
    """n anchors and n positives (anchor + anisotropic noise) stacked; pairs (i, n + i)."""
    rng = np.random.default_rng(seed)
    anchors = correlated(n, d, seed)
    noise = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) * np.logspace(-1, -3, d)[:, None])
    return np.vstack([anchors, anchors + noise]), (np.arange(n), np.arange(n, 2 * n))


def cirtorch_whitenlearn(X, qidxs, pidxs):
    """cirtorch.utils.whiten.whitenlearn transcribed (columns are descriptors there)."""
    X = X.T
    m = X[:, qidxs].mean(axis=1, keepdims=True)
    df = X[:, qidxs] - X[:, pidxs]
    P = np.linalg.inv(np.linalg.cholesky(df @ df.T / df.shape[1]))
    df = P @ (X - m)
    eigval, eigvec = np.linalg.eig(df @ df.T)
    return m[:, 0], eigvec[:, eigval.argsort()[::-1]].T @ P


def align_signs(A, B):
    """B with each row's sign flipped to agree with A's."""
    return B * np.sign(np.sum(A * B, axis=1, keepdims=True))


def test_pca_whitening_gives_identity_covariance():
    X = correlated()
    w = PCAWhitening().fit(X)
    Y = w.transform(X, normalize=False)
    assert Y.shape == (500, 32)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.eye(32), atol=1e-6)
    np.testing.assert_allclose(Y.mean(axis=0), 0, atol=1e-9)
    Z = w.transform(X)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(Z, Y / np.linalg.norm(Y, axis=1, keepdims=True))
    assert w.transform(X.astype(np.float32)).dtype == np.float32


def test_pca_reduction_keeps_top_components_in_order():
    X = correlated()
    w = PCAWhitening(dim=8).fit(X)
    reference = PCA(n_components=8).fit(X)
    directions = w.projection_ / np.linalg.norm(w.projection_, axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs(np.sum(directions * reference.components_, axis=1)), 1, atol=1e-8)
    np.testing.assert_allclose(np.cov(w.transform(X, normalize=False), rowvar=False), np.eye(8), atol=1e-6)
    full = PCAWhitening().fit(X)
    np.testing.assert_allclose(w.projection_, full.projection_[:8])


def test_pca_power_zero_is_plain_rotation():
    X = correlated()
    w = PCAWhitening(power=0).fit(X)
    reference = PCA().fit(X)
    np.testing.assert_allclose(w.projection_ @ w.projection_.T, np.eye(32), atol=1e-10)
    np.testing.assert_allclose(np.cov(w.transform(X, normalize=False), rowvar=False),
                               np.diag(reference.explained_variance_), atol=1e-8)


def test_pca_shrinkage_adds_fraction_of_mean_eigenvalue():
    X = correlated()
    eig = PCA().fit(X).explained_variance_
    w = PCAWhitening(shrinkage=0.5).fit(X)
    expected = eig / (eig + 0.5 * eig.mean())
    np.testing.assert_allclose(np.cov(w.transform(X, normalize=False), rowvar=False), np.diag(expected), atol=1e-8)
    assert expected[0] > 0.9 and expected[-1] < 0.01  # strong directions nearly whitened, weak ones damped


def test_pca_shrinkage_rescues_singular_covariance():
    X = correlated(100, 5) @ np.random.default_rng(2).normal(size=(5, 32))  # rank 5 in 32-d
    with pytest.raises(DeepretError, match="singular: use a smaller dim or use shrinkage"):
        PCAWhitening().fit(X)
    Y = PCAWhitening(shrinkage=0.1).fit(X).transform(X)
    assert np.isfinite(Y).all()
    PCAWhitening(dim=5).fit(X)  # the rank-5 part alone is fine


def test_lw_whitens_pair_differences_and_rotates_by_pca():
    X, (q, p) = pair_data()
    w = LearnedWhitening().fit(X, (q, p))
    np.testing.assert_allclose(w.mean_, X[q].mean(axis=0))
    diff = (X[q] - X[p]) @ w.projection_.T
    np.testing.assert_allclose(diff.T @ diff / len(q), np.eye(16), atol=1e-6)
    Y = w.transform(X, normalize=False)
    second = Y.T @ Y / len(X)
    np.testing.assert_allclose(second, np.diag(np.diag(second)), atol=1e-6)
    assert np.all(np.diff(np.diag(second)) < 0)
    # P = R.T @ C^-1/2 with R orthogonal: P1 is the symmetric inverse square root of the difference moment
    values, vectors = np.linalg.eigh((X[q] - X[p]).T @ (X[q] - X[p]) / len(q))
    P1 = vectors @ np.diag(values ** -0.5) @ vectors.T
    R = w.projection_ @ np.linalg.inv(P1)
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-8)
    m, ref = cirtorch_whitenlearn(X, q, p)  # same P up to row signs (Cholesky vs symmetric root)
    np.testing.assert_allclose(w.mean_, m)
    # Both are float64, but how well float64 determines row k of P depends on the data, not on a fixed
    # atol: P1's error grows with cond(C) (here 2.9e6) and row k, an eigenvector of the rotation's second
    # moment S (eigenvalues 7.8e9 ... 189, the last two only 1.4 apart), is determined to about
    # eps * ||S|| / gap_k (Davis-Kahan: 1.2e-6 relative for the last rows, entries up to 3e3). Eigensolvers
    # (eigh vs cirtorch's eig, OpenBLAS's per-CPU kernels) differ within that; so each row is compared
    # relative to its norm, to 10x the first-order bound. A wrong P differs by O(1) of its norm.
    eps = np.finfo(np.float64).eps
    s = np.diag(second)
    gaps = np.array([np.delete(np.abs(s - sk), k).min() for k, sk in enumerate(s)])
    bound = 10 * eps * (s[0] / gaps + values.max() / values.min())
    err = np.abs(align_signs(ref, w.projection_) - ref).max(axis=1)
    assert np.all(err <= bound * np.linalg.norm(ref, axis=1)), (err, bound)
    assert bound.max() < 1e-4  # still far below an O(1) difference


def test_lw_reduction_keeps_leading_rows():
    X, pairs = pair_data()
    full = LearnedWhitening().fit(X, pairs)
    w = fit_whitening("lw", X, pairs=pairs, dim=6)
    assert w.projection_.shape == (6, 16)
    np.testing.assert_allclose(w.projection_, full.projection_[:6])


def test_as_linear_reproduces_transform_in_network(tmp_path):
    from deepret.models import create_model, load, save

    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random")
    rng = np.random.default_rng(3)
    train = rng.normal(size=(800, 512)) * np.logspace(0, -1, 512) + rng.normal(size=512)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    w = fit_whitening("pca", train, dim=64)
    matrix, bias = w.as_linear()
    assert matrix.shape == (64, 512) and bias.shape == (64,) and matrix.dtype == torch.float32
    net.set_whitening(matrix, bias, "pca")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled, out = net.pooled(x).numpy(), net(x).numpy()
    assert out.shape == (3, 64) and net.dim == 64
    np.testing.assert_allclose(out, w.transform(pooled), atol=1e-5)
    reloaded = load(save(net, tmp_path / "w.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(x).numpy(), out, atol=1e-6)
    assert reloaded.meta["whitening"] == {"dim_in": 512, "dim_out": 64, "method": "pca"}


@pytest.mark.parametrize("method", ["pca", "lw"])
def test_to_dict_round_trips_through_json(method):
    X, pairs = pair_data()
    w = fit_whitening(method, X, pairs=pairs, dim=10, shrinkage=0.2)
    back = Whitening.from_dict(json.loads(json.dumps(w.to_dict())))
    assert type(back) is type(w) and back.shrinkage == 0.2 and back.dim == 10
    np.testing.assert_allclose(back.transform(X), w.transform(X), atol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda X: fit_whitening("zca", X), "unknown whitening method 'zca'"),
    (lambda X: fit_whitening("pca", X[:10], dim=16), "10 descriptors cannot fit a 16-d"),
    (lambda X: fit_whitening("pca", X[:32]), "32 descriptors cannot fit a 32-d"),
    (lambda X: fit_whitening("pca", X, dim=64), "exceeds the descriptor dimension 32"),
    (lambda X: fit_whitening("pca", X, shrinkage=-1), "shrinkage must be >= 0"),
    (lambda X: fit_whitening("pca", X, whiten=True), "bad option for pca"),
    (lambda X: fit_whitening("pca", np.full((50, 4), np.nan)), "NaN"),
    (lambda X: fit_whitening("pca", X[0]), r"\(N, D\) array"),
    (lambda X: fit_whitening("lw", X), "needs matching pairs"),
    (lambda X: fit_whitening("lw", X, pairs=([0, 1], [2, 500])), "pair index 500 is out of range for 500"),
    (lambda X: fit_whitening("lw", X, pairs=([0, -1], [2, 3])), "pair index -1 is out of range"),
    (lambda X: fit_whitening("lw", X, pairs=([0, 1], [2])), "equal length"),
    (lambda X: fit_whitening("lw", X, pairs=([0.5], [2.0])), "must be integers"),
    (lambda X: fit_whitening("lw", X, pairs=(np.arange(10), np.arange(10, 20))),
     "10 pair differences of dim 32 is singular: add pairs.*shrinkage"),
    (lambda X: PCAWhitening().transform(X), "not fitted"),
    (lambda X: PCAWhitening().fit(X).transform(X[:, :8]), "do not match the whitening input dim 32"),
])
def test_bad_input_raises_one_line_error(call, match):
    with pytest.raises(DeepretError, match=match) as info:
        call(correlated())
    assert "\n" not in str(info.value)
