"""t-SNE map of a benchmark's database descriptors, one colour per landmark (from the ground truth)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepret.datasets import Benchmark
from deepret.errors import DeepretError
from deepret.features import Features
from deepret.viz.png import save_png

UNLABELED_COLOUR = (0.65, 0.65, 0.65)
DPI = 100


def image_landmarks(bench: Benchmark) -> list[str | None]:
    """Landmark of every database image: that of the queries it is a positive of ('ok' in the old
    protocol, 'easy'+'hard' in the revisited one); None when it is a positive of no query. An image
    positive for queries of several landmarks takes the one with the most such queries (ties: the
    alphabetically first)."""
    votes: list[Counter] = [Counter() for _ in bench.imlist]
    for q, landmark in enumerate(bench.query_landmarks):
        for i in bench.positives(q):
            if not 0 <= i < len(votes):
                raise DeepretError(f"gnd of {bench.name}: query {q} lists image index {i}, but the database "
                                   f"has {len(votes)} images; replace the gnd pickle")
            votes[i][landmark] += 1
    return [min(v, key=lambda k: (-v[k], k)) if v else None for v in votes]


def embed_tsne(X: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50,
               max_iter: int = 1000, n_jobs: int | None = None) -> np.ndarray:
    """2-D t-SNE of the rows of X (N, D): scikit-learn's Barnes-Hut TSNE (learning rate N/12).

    It runs with `n_jobs` OpenMP threads, default 1: on a shared 2-core machine libgomp's busy
    waiting made 2 threads several times slower than 1 (docs/benchmarks.md, "t-SNE").

    X is reduced by PCA to `pca_dims` first when wider. The start is the first two principal
    components, scaled to std 1e-4, jittered by 1% with `seed`: the same seed gives the same
    points, another seed another arrangement of the same structure. Perplexity is lowered to
    (N-1)/3 for small N (it must stay below N)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise DeepretError(f"t-SNE needs a 2-D array of descriptors (N, D), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise DeepretError("descriptors contain NaN or inf: extract the features again")
    n = len(X)
    if n <= 2:  # nothing to lay out: a point at the origin, or two on a line
        return np.array([[0.0, 0.0], [1.0, 0.0]][:n], dtype=np.float32).reshape(n, 2)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    k = min(max(pca_dims, 2), n, X.shape[1])
    Z = PCA(k, random_state=seed).fit_transform(X).astype(np.float32)
    if X.shape[1] > pca_dims:
        X = Z
    init = Z[:, :2] if Z.shape[1] >= 2 else np.pad(Z, ((0, 0), (0, 2 - Z.shape[1])))
    init = init / max(float(init[:, 0].std()), 1e-12) * 1e-4
    init = init + np.random.default_rng(seed).normal(0.0, 1e-6, init.shape)
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    threads = max(1, n_jobs or 1)
    tsne = TSNE(2, perplexity=perplexity, init=init.astype(np.float32), learning_rate="auto",
                max_iter=max_iter, random_state=seed, n_jobs=threads)
    with threadpool_limits(threads, user_api="openmp"):  # n_jobs alone leaves other loops at all cores
        return tsne.fit_transform(X).astype(np.float32)


def palette(n: int) -> list[tuple[float, float, float]]:
    """n distinct qualitative colours, none of them grey (grey means unlabeled)."""
    # tab10's hues first, then the darkest of tab20b's five hues, then the light tab20 ones
    cols = [colormaps["tab20"](i)[:3] for i in range(0, 20, 2)]
    cols += [colormaps["tab20b"](i)[:3] for i in range(0, 20, 4)]
    cols += [colormaps["tab20"](i)[:3] for i in range(1, 20, 2)]
    cols += [colormaps[m](i)[:3] for m in ("tab20b", "tab20c") for i in range(20) if m == "tab20c" or i % 4]
    cols = [c for c in cols if max(c) - min(c) > 0.08]
    return [cols[i % len(cols)] for i in range(n)]


def tsne_figure(points_2d: np.ndarray, labels: Sequence[str | None], out_path: str | os.PathLike,
                title: str, show_unlabeled: bool = False) -> Path:
    """Scatter plot of the 2-D points, one colour and legend entry per landmark; unlabeled points
    (label None) small and grey behind the rest when show_unlabeled, else left out. Writes a PNG."""
    pts = np.asarray(points_2d, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) != len(labels):
        raise DeepretError(f"{len(labels)} labels for points of shape {pts.shape}: pass (N, 2) points "
                           "and one label per point")
    landmarks = sorted({lab for lab in labels if lab is not None})
    fig = Figure(figsize=(10, 8), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.03, 0.7, 0.88))
    ax.set_axis_off()
    mask = np.array([lab is None for lab in labels], dtype=bool)
    if show_unlabeled and mask.any():
        ax.scatter(pts[mask, 0], pts[mask, 1], s=6, color=UNLABELED_COLOUR, linewidths=0, zorder=1,
                   label=f"unlabeled ({int(mask.sum())})")
    for lab, colour in zip(landmarks, palette(len(landmarks))):
        sel = np.array([x == lab for x in labels], dtype=bool)
        ax.scatter(pts[sel, 0], pts[sel, 1], s=22, color=colour, linewidths=0, zorder=2,
                   label=f"{lab} ({int(sel.sum())})")
    shown = pts if show_unlabeled else pts[~mask]
    if len(shown):  # frame the drawn points only
        lo, hi = shown.min(axis=0), shown.max(axis=0)
        pad = np.maximum((hi - lo) * 0.04, 1e-3)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    if ax.get_legend_handles_labels()[0]:
        handles, names = ax.get_legend_handles_labels()
        if show_unlabeled and mask.any():  # unlabeled last in the legend
            handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(0.73, 0.5), frameon=False,
                   markerscale=1.6, fontsize=10)
    fig.suptitle(title, fontsize=13)
    return save_png(fig, out_path, dpi=DPI)


def tsne_plot(features: Features, bench: Benchmark, out_path: str | os.PathLike, seed: int = 0,
              unlabeled: bool = False, title: str | None = None) -> Path:
    """t-SNE of the database descriptors coloured by landmark; without `unlabeled`, the images that
    are a positive of no query are left out before embedding (faster, cleaner)."""
    if list(features.imlist) != list(bench.imlist):
        raise DeepretError(f"the features list {len(features.imlist)} database images, not the "
                           f"{len(bench.imlist)} of {bench.name}: extract the features for {bench.name}")
    labels = image_landmarks(bench)
    keep = [i for i, lab in enumerate(labels) if unlabeled or lab is not None]
    if not keep:
        raise DeepretError(f"no database image of {bench.name} is a positive of any query: "
                           "pass --unlabeled to draw them all")
    points = embed_tsne(features.db[keep], seed=seed)
    if title is None:
        model = features.meta["model"]["name"]
        title = f"t-SNE of {bench.name}: {len(keep)} database images, {model}"
    return tsne_figure(points, [labels[i] for i in keep], out_path, title, show_unlabeled=unlabeled)
