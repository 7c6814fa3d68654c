"""Per-query cost of re-ranking (alpha-QE, DBA, diffusion) against plain exact search, in one run.

    nice -n 19 python bench/rerank_cost.py --n 100000 --dim 512 --queries 200 --json rerank_cost.json

The database: N synthetic L2-normalised vectors from a clustered mixture: N/100 clusters of uneven
(log-normal) sizes around random unit centres, a direction common to all (--common 1.5: like CNN
descriptors, any two photos are at cosine about 0.2, two of a cluster at about 0.3) and Gaussian
noise (--spread 2.8), so that plain search is right but not perfect (precision@10 about 0.73 at
N=20000, lower at 100k); the queries are held-out draws of the same mixture.

Every method is a `deepret.rerank.Reranker` fitted once (the offline part: the FAISS Flat index of
the final database vectors, DBA's self-search, diffusion's k-NN graph), then asked for the top
--topk of one query at a time, as `deepret index search --rerank` does; the methods take turns
query by query, so that a change of machine load hits them alike. Reported per method: the fit's
seconds; the RSS and the peak RSS (resource.getrusage) before and after it (the data are generated
in small chunks and diffusion is fitted first, so the peak's rise is its graph construction's;
`rss_rise_mb` is the fitted state, the Flat index and the graph, plus freed memory the allocator
keeps); per-query milliseconds (median, mean, p90) and the median's ratio to plain search's in the
same run; precision@10 against the query's cluster (a sanity check that the methods act on
clustered data). For diffusion also its graph: non-zeros and bytes of the sparse affinity W, and
of the system I - alpha S when it is kept (truncate >= N). No N x N matrix is built.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from deepret.rerank import Reranker, parse_rerank

METHODS = {"plain": "", "alpha-qe": "alpha-qe", "dba": "dba", "diffusion": "diffusion"}


def mixture(n: int, centres: np.ndarray, weights: np.ndarray, common: np.ndarray, spread: float,
            rng: np.random.Generator, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors and their cluster labels: `common` + a centre drawn by `weights` + Gaussian
    noise of norm about `spread`, normalised."""
    dim = centres.shape[1]
    labels = rng.choice(len(centres), size=n, p=weights)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        noise = rng.standard_normal((len(labels[s:s + chunk]), dim), dtype=np.float32)
        part = common + centres[labels[s:s + chunk]] + spread / np.sqrt(dim) * noise
        x[s:s + chunk] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x, labels


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if platform.system() == "Darwin" else 1024)


def rss_mb() -> float:
    """Current resident set size, MiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def sparse_bytes(m) -> int:
    return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000, help="database vectors")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="held-out queries, timed one at a time")
    ap.add_argument("--topk", type=int, default=100, help="results asked for per query")
    ap.add_argument("--spread", type=float, default=2.8, help="noise norm against unit cluster centres")
    ap.add_argument("--common", type=float, default=1.5, help="norm of the direction all vectors share")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    n_clusters = max(2, args.n // 100)
    centres = rng.standard_normal((n_clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 0.5, n_clusters)
    weights /= weights.sum()
    common = rng.standard_normal(args.dim, dtype=np.float32)
    common *= args.common / np.linalg.norm(common)
    start = time.perf_counter()
    xb, yb = mixture(args.n, centres, weights, common, args.spread, rng)
    xq, yq = mixture(args.queries, centres, weights, common, args.spread, rng)
    out: dict = {"n": args.n, "dim": args.dim, "queries": args.queries, "topk": args.topk, "clusters": n_clusters,
                 "spread": args.spread, "common": args.common,
                 "machine": {"cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                             "load_average": [round(v, 2) for v in os.getloadavg()],
                             "python": platform.python_version(),
                             "faiss": faiss.__version__, "numpy": np.__version__},
                 "data_seconds": round(time.perf_counter() - start, 2), "database_mb": round(xb.nbytes / 2**20, 1),
                 "methods": {}}
    print(json.dumps({k: out[k] for k in ("n", "dim", "queries", "clusters", "machine")}), flush=True)

    rerankers: dict[str, Reranker] = {}
    for name in ("diffusion", "plain", "alpha-qe", "dba"):  # diffusion first: its peak RSS is its own
        reranker = parse_rerank(METHODS[name]) if METHODS[name] else Reranker([])
        before_rss, before_peak = rss_mb(), peak_rss_mb()
        t = time.perf_counter()
        reranker.fit(xb)
        row = {"spec": reranker.spec or "(none: exact search)", "fit_s": round(time.perf_counter() - t, 3),
               "rss_before_mb": round(before_rss, 1), "rss_after_mb": round(rss_mb(), 1),
               "peak_rss_before_mb": round(before_peak, 1), "peak_rss_after_mb": round(peak_rss_mb(), 1)}
        row["rss_rise_mb"] = round(row["rss_after_mb"] - before_rss, 1)  # fitted state + memory the allocator keeps
        row["peak_rise_mb"] = round(row["peak_rss_after_mb"] - before_peak, 1)  # 0: below an earlier peak
        if reranker.graph is not None:
            w, system = reranker.graph, reranker.system
            row["graph"] = {"nnz": int(w.nnz), "nnz_per_row": round(w.nnz / args.n, 2), "bytes": sparse_bytes(w),
                            "system_kept": system is not None,
                            "system_bytes": sparse_bytes(system) if system is not None else 0,
                            "dense_n_by_n_float32_bytes": 4 * args.n * args.n}
        out["methods"][name] = row
        rerankers[name] = reranker
        print(json.dumps({name: row}), flush=True)

    names = list(METHODS)
    times = {name: [] for name in names}
    hits = {name: [] for name in names}
    for name in names:  # warm-up
        rerankers[name].rerank(None, xq[:1], args.topk)
    for i in range(args.queries):
        for name in names:  # interleaved, query by query
            t = time.perf_counter()
            _, ids = rerankers[name].rerank(None, xq[i:i + 1], args.topk)
            times[name].append(time.perf_counter() - t)
            hits[name].append(float(np.mean(yb[ids[0, :10]] == yq[i])))
    plain = float(np.median(times["plain"]))
    for name in names:
        ms = np.array(times[name]) * 1e3
        out["methods"][name].update({
            "query_ms_median": round(float(np.median(ms)), 3), "query_ms_mean": round(float(ms.mean()), 3),
            "query_ms_p90": round(float(np.percentile(ms, 90)), 3),
            "ratio_to_plain": round(float(np.median(times[name])) / plain, 2),
            "precision_at_10": round(float(np.mean(hits[name])), 3)})
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n| method | fit s | per query ms (median) | x plain | P@10 |\n|---|---|---|---|---|")
    for name in names:
        r = out["methods"][name]
        print(f"| {name} | {r['fit_s']:.2f} | {r['query_ms_median']:.2f} | {r['ratio_to_plain']:.2f} | "
              f"{r['precision_at_10']:.3f} |")


if __name__ == "__main__":
    main()
