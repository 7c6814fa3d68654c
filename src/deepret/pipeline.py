"""Benchmark runs: extract (or reuse) a benchmark's features, evaluate them, draw a query's top-k."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepret.datasets import Benchmark
from deepret.errors import DeepretError
from deepret.evaluate import EvalResult, evaluate, label_results
from deepret.extract import ExtractSettings, extract, resolve_settings
from deepret.features import Features, cache_path, default_cache_dir
from deepret.imageio import DEFAULT_MAX_PIXELS, ImageError, broken_images_message, image_size
from deepret.models import RetrievalNet
from deepret.search import rank, similarities
from deepret.viz import topk_figure


@dataclass
class RunOptions:
    """Everything besides the network and benchmark that decides a run."""

    settings: ExtractSettings = ExtractSettings()    # size None: the network's default size
    crop_queries: bool = True
    cache_dir: Path | None = None
    use_cache: bool = True                          # False: neither read nor write the cache
    device: str | None = None
    workers: int | None = None
    progress: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS     # a larger benchmark image is an error (None: PIL's limit)


def check_benchmark_images(bench: Benchmark, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Read the header of every database and query image (no pixels): one DeepretError naming every
    missing, unreadable or oversized one, so a broken database image does not hide broken queries."""
    paths = dict.fromkeys([bench.image_path(i) for i in range(len(bench.imlist))]
                          + [bench.query_path(q) for q in range(len(bench.qimlist))])  # a query may be in the db
    broken = []
    for path in paths:
        try:
            image_size(path, max_pixels=max_pixels)
        except ImageError as exc:
            broken.append(exc)
    if broken:
        raise DeepretError(broken_images_message(broken, len(paths), f"images of {bench.name} (database and queries)"))


def benchmark_features(net: RetrievalNet, bench: Benchmark,
                       opts: RunOptions | None = None) -> tuple[Features, Path | None, bool]:
    """Features of `bench` under `net`: (features, their cache file or None with use_cache off,
    whether they came from the cache)."""
    opts = opts or RunOptions()
    settings = resolve_settings(net, opts.settings, opts.device)  # size and precision made explicit
    key_settings = {**settings.to_dict(), "crop_queries": opts.crop_queries}
    path = None
    if opts.use_cache:
        path = cache_path(opts.cache_dir or default_cache_dir(), bench, net, settings.to_dict(), opts.crop_queries)
        if path.is_file():
            return Features.load(path), path, True
    check_benchmark_images(bench, opts.max_pixels)  # before any forward pass
    common = dict(settings=settings, device=opts.device, workers=opts.workers, progress=opts.progress,
                  max_pixels=opts.max_pixels, on_error="skip")
    db_paths = [bench.image_path(i) for i in range(len(bench.imlist))]
    db = extract(net, db_paths, desc=f"{bench.name} database", **common)
    bbxs = [bench.query_bbx(q) if opts.crop_queries else None for q in range(len(bench.qimlist))]
    q_paths = [bench.query_path(q) for q in range(len(bench.qimlist))]
    queries = extract(net, q_paths, bbxs, desc=f"{bench.name} queries", **common)
    if db.failed or queries.failed:  # headers fine, pixels not (e.g. a truncated JPEG): all of them at once
        broken = {db_paths[i]: r for i, r in db.failed.items()} | {q_paths[i]: r for i, r in queries.failed.items()}
        raise DeepretError(broken_images_message([ImageError(p, r) for p, r in broken.items()],
                                                 len(set(db_paths) | set(q_paths)),
                                                 f"images of {bench.name} (database and queries)"))
    meta = {"model": net.meta, "settings": key_settings, "dataset": bench.name}
    features = Features(db.vectors, queries.vectors, list(bench.imlist), list(bench.qimlist), meta)
    if path is not None:
        features.save(path)
    return features, path, False


def evaluate_features(features: Features, bench: Benchmark, rerank: str | None = None) -> dict[str, EvalResult]:
    """mAP, mP@k and per-query AP for every protocol of the benchmark; `rerank`: a deepret.rerank
    spec (e.g. "dba+alpha-qe") applied to the ranking first."""
    if rerank:
        from deepret.rerank import parse_rerank

        return evaluate(parse_rerank(rerank).ranks(features.db, features.queries), bench.gnd)
    return evaluate(similarities(features.db, features.queries), bench.gnd)


def evaluate_factory(features: Features, bench: Benchmark, factory: str, params: str = "") -> dict[str, EvalResult]:
    """Like evaluate_features, searched with a FAISS factory (trained on the database) instead of exactly."""
    from deepret.vectors import factory_ranks

    return evaluate(factory_ranks(features.db, features.queries, factory, params=params), bench.gnd)


def topk_ranking(features: Features, query: int, k: int, rerank: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(database indices, scores) of the top `k` of `query`: by similarity, or in the order of the
    `rerank` spec (with the re-ranker's scores), the ranking that evaluate_features(rerank=...) scores."""
    if rerank:
        from deepret.rerank import parse_rerank

        scores, ids = parse_rerank(rerank).rerank(features.db, features.queries[query:query + 1], k)
        return ids[0], scores[0]
    scores = similarities(features.db, features.queries[query:query + 1])[:, 0]
    top = rank(scores[:, None])[:k, 0]
    return top, scores[top]


def draw_topk(features: Features, bench: Benchmark, query: int, k: int, out: str | Path,
              results: dict[str, EvalResult] | None = None, crop_drawn: bool = True,
              rerank: str | None = None) -> Path:
    """The top-k figure of `query`: its bbx drawn, results bordered by their ground-truth label.
    `rerank`: draw the re-ranked ranking (pass the `results` evaluated with the same spec)."""
    bench.check_query(query)
    top, scores = topk_ranking(features, query, k, rerank)
    results = results if results is not None else evaluate_features(features, bench, rerank=rerank)
    protocol = "medium" if "medium" in results else next(iter(results))
    ap = results[protocol].aps[query]
    ap_text = "no positives" if np.isnan(ap) else f"AP {ap:.1f}% ({protocol})"
    return topk_figure(
        bench.query_path(query), bench.query_bbx(query) if crop_drawn else None,
        [bench.image_path(int(i)) for i in top], label_results(top, bench.gnd[query]), out,
        title=f"query {query}: {bench.qimlist[query]} — {ap_text}" + (f", re-ranked by {rerank}" if rerank else ""),
        scores=[float(s) for s in scores], upright=False,  # benchmark boxes are in raw pixels
    )
