"""t-SNE speed: scikit-learn's Barnes-Hut TSNE, deepret's embed_tsne and openTSNE, same data.

    python bench/tsne_speed.py --sizes 1000,5063,6392 --repeat 2,1,1 \
        --only sklearn,deepret,opentsne-fft-1thread,opentsne-bh-1thread
    python bench/tsne_speed.py --sizes 1000,5063,6392 --repeat 2,1,1   # the four defaults below
    python bench/tsne_speed.py --sizes 100,500,1000,1500 --repeat 2,1,1,1 --only sklearn,sklearn-exact,deepret

Stand-in for CNN descriptors: N points of a mixture of 40 Gaussians in 1280-d (70% of the points)
plus 30% diffuse background, rows L2-normalised, float32, then PCA to 50 dims (timed apart, it is
the same for all). In the same process, per size, interleaved, seed 0, --jobs threads (default:
all cores) unless the name says 1thread:
  sklearn          sklearn.manifold.TSNE(init="pca", learning_rate="auto"), Barnes-Hut, 1000 iter;
  sklearn-750      the same with max_iter=750 (openTSNE's 250 early-exaggeration + 500 iterations);
  opentsne-fft     openTSNE.TSNE(negative_gradient_method="fft", neighbors="exact"), 750 iter;
  opentsne-bh      openTSNE.TSNE(negative_gradient_method="bh", neighbors="exact"), 750 iter;
  sklearn-1thread  "sklearn" inside threadpoolctl.threadpool_limits(1, "openmp"), n_jobs=1;
  opentsne-fft-1thread, opentsne-bh-1thread   the openTSNE ones likewise on 1 OpenMP thread;
  sklearn-exact    TSNE(method="exact"), 1000 iter (dense N x N affinities: small N only);
  deepret          deepret.viz.tsne.embed_tsne with its defaults (sklearn's Barnes-Hut, 1000
                   iter, 1 OpenMP thread, jittered PCA start).
openTSNE is not a deepret dependency: `pip install openTSNE` for its rows.

Time: best of --repeat (one count per size) in wall-clock seconds, and the CPU seconds of the
process (all threads) in that run: on a loaded machine the wall time also counts the waits for a
core, the CPU time much less. `same`: every repeat gave a bit-identical embedding. Quality:
KL divergence as each reports it; knn-acc is the share of the 10 nearest 2-D neighbours of a
cluster point that belong to its cluster; kept is the share of its 10 nearest neighbours in 50-d
that stay among its 10 nearest in 2-D. Prints a markdown table (time ratios are to sklearn).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors


def mixture(n: int, dim: int = 1280, k: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a Gaussian mixture (label 0..k-1) plus diffuse background (label -1), L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    labels = np.where(rng.random(n) < 0.7, rng.integers(0, k, n), -1)
    x = np.where(labels[:, None] >= 0, centres[labels], 0.0) + 1.5 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def run_sklearn(z: np.ndarray, jobs: int, max_iter: int = 1000) -> tuple[np.ndarray, float]:
    t = TSNE(init="pca", learning_rate="auto", perplexity=30.0, max_iter=max_iter, n_jobs=jobs,
             random_state=0)
    y = t.fit_transform(z)
    return np.asarray(y), float(t.kl_divergence_)


def run_exact(z: np.ndarray, jobs: int) -> tuple[np.ndarray, float]:
    t = TSNE(init="pca", learning_rate="auto", perplexity=min(30.0, (len(z) - 1) / 3), method="exact",
             n_jobs=jobs, random_state=0)
    y = t.fit_transform(z)
    return np.asarray(y), float(t.kl_divergence_)


def run_deepret(z: np.ndarray, jobs: int) -> tuple[np.ndarray, float]:
    from deepret.viz.tsne import embed_tsne

    return embed_tsne(z, seed=0), float("nan")  # its default threads (1), whatever --jobs says


def run_opentsne(z: np.ndarray, jobs: int, method: str) -> tuple[np.ndarray, float]:
    import openTSNE

    e = openTSNE.TSNE(perplexity=30.0, n_jobs=jobs, random_state=0, neighbors="exact",
                      negative_gradient_method=method).fit(z)
    return np.asarray(e), float(e.kl_divergence)


def quality(z: np.ndarray, y: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(kNN cluster accuracy in 2-D over cluster points, share of 50-d kNN kept in 2-D)."""
    nn_y = NearestNeighbors(n_neighbors=k + 1).fit(y).kneighbors(y, return_distance=False)[:, 1:]
    nn_z = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    inl = labels >= 0
    acc = float((labels[nn_y[inl]] == labels[inl, None]).mean())
    kept = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nn_y, nn_z)]))
    return acc, kept


def one_thread(fn):
    """fn run with OpenMP limited to 1 thread (no busy-waiting second thread)."""
    def run(z: np.ndarray, jobs: int) -> tuple[np.ndarray, float]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="openmp"):
            return fn(z, 1)
    return run


CANDIDATES = {
    "sklearn": lambda z, j: run_sklearn(z, j),
    "sklearn-750": lambda z, j: run_sklearn(z, j, max_iter=750),
    "sklearn-1thread": one_thread(run_sklearn),
    "sklearn-exact": run_exact,
    "deepret": run_deepret,
    "opentsne-fft": lambda z, j: run_opentsne(z, j, "fft"),
    "opentsne-bh": lambda z, j: run_opentsne(z, j, "bh"),
    "opentsne-fft-1thread": one_thread(lambda z, j: run_opentsne(z, j, "fft")),
    "opentsne-bh-1thread": one_thread(lambda z, j: run_opentsne(z, j, "bh")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5063,6392")
    ap.add_argument("--repeat", default="2,1,1", help="runs per size (one count, or one per size)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="sklearn,sklearn-750,opentsne-fft,opentsne-bh",
                    help=f"comma-separated, from {','.join(CANDIDATES)} (sklearn-exact: O(N^2) memory)")
    args = ap.parse_args()
    names = args.only.split(",")
    import sklearn

    try:
        import openTSNE

        otsne = openTSNE.__version__
    except ImportError:
        otsne = "not installed"
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, --jobs {args.jobs}, "
          f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, "
          f"openTSNE {otsne}, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    sizes = [int(v) for v in args.sizes.split(",")]
    repeats = [int(v) for v in args.repeat.split(",")]
    repeats = (repeats * len(sizes))[:len(sizes)] if len(repeats) == 1 else repeats
    for n, repeat in zip(sizes, repeats):
        x, labels = mixture(n)
        t0 = time.perf_counter()
        z = PCA(50, random_state=0).fit_transform(x)
        t_pca = time.perf_counter() - t0
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in names}
        outs: dict[str, list[tuple[np.ndarray, float]]] = {m: [] for m in names}
        for _ in range(repeat):
            for m in names:  # interleaved, so a load change hits every candidate alike
                t0, c0 = time.perf_counter(), time.process_time()
                outs[m].append(CANDIDATES[m](z, args.jobs))
                times[m].append((time.perf_counter() - t0, time.process_time() - c0))
                print(f"  n={n} {m}: {times[m][-1][0]:.1f} s, {times[m][-1][1]:.1f} CPU s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        best = {m: min(times[m]) for m in names}
        base = best.get("sklearn", (float("nan"), float("nan")))
        for m in names:
            y, kl = outs[m][0]
            same = "-" if repeat < 2 else "yes" if all(np.array_equal(y, o[0]) for o in outs[m][1:]) else "no"
            acc, kept = quality(z, y, labels)
            rows.append((n, m, *best[m], best[m][0] / base[0], best[m][1] / base[1], same, kl, acc, kept,
                         t_pca))
    print(f"# load {os.getloadavg()[0]:.2f} at the end\n")
    print("| points | implementation | wall s | CPU s | wall / sklearn | CPU / sklearn | same with seed "
          "| KL | knn-acc | kept | PCA s |")
    print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for n, m, t, c, r, rc, same, kl, acc, kept, t_pca in rows:
        kl_text = "-" if np.isnan(kl) else f"{kl:.3f}"
        print(f"| {n} | {m} | {t:.1f} | {c:.1f} | {r:.2f} | {rc:.2f} | {same} | {kl_text} | {acc:.3f} "
              f"| {kept:.3f} | {t_pca:.2f} |")


if __name__ == "__main__":
    main()
