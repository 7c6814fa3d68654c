"""Benchmark runs: extract (or reuse) a benchmark's features, evaluate them, draw a query's top-k."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepret.datasets import Benchmark
from deepret.evaluate import EvalResult, evaluate, label_results
from deepret.extract import ExtractSettings, extract
from deepret.features import Features, cache_path, default_cache_dir
from deepret.models import RetrievalNet
from deepret.search import rank_database, similarities
from deepret.viz import topk_figure


@dataclass
class RunOptions:
    """Everything besides the network and benchmark that decides a run."""

    settings: ExtractSettings = ExtractSettings()
    crop_queries: bool = True
    cache_dir: Path | None = None
    use_cache: bool = True
    device: str | None = None
    workers: int | None = None
    progress: bool = True


def benchmark_features(net: RetrievalNet, bench: Benchmark, opts: RunOptions = RunOptions()) -> tuple[Features, Path, bool]:
    """Features of `bench` under `net`: (features, their file, whether they came from the cache)."""
    key_settings = {**opts.settings.to_dict(), "crop_queries": opts.crop_queries}
    path = cache_path(opts.cache_dir or default_cache_dir(), bench.name, net, key_settings,
                      (bench.imlist, bench.qimlist))
    if opts.use_cache and path.is_file():
        return Features.load(path), path, True
    common = dict(settings=opts.settings, device=opts.device, workers=opts.workers, progress=opts.progress)
    db = extract(net, [bench.image_path(i) for i in range(len(bench.imlist))],
                 desc=f"{bench.name} database", **common)
    bbxs = [bench.query_bbx(q) if opts.crop_queries else None for q in range(len(bench.qimlist))]
    queries = extract(net, [bench.query_path(q) for q in range(len(bench.qimlist))], bbxs,
                      desc=f"{bench.name} queries", **common)
    meta = {"model": net.meta, "settings": key_settings, "dataset": bench.name}
    features = Features(db, queries, list(bench.imlist), list(bench.qimlist), meta)
    features.save(path)
    return features, path, False


def evaluate_features(features: Features, bench: Benchmark) -> dict[str, EvalResult]:
    """mAP, mP@k and per-query AP for every protocol of the benchmark."""
    return evaluate(rank_database(features.db, features.queries), bench.gnd)


def evaluate_factory(features: Features, bench: Benchmark, factory: str, params: str = "") -> dict[str, EvalResult]:
    """Like evaluate_features, searched with a FAISS factory (trained on the database) instead of exactly."""
    from deepret.vectors import factory_ranks

    return evaluate(factory_ranks(features.db, features.queries, factory, params=params), bench.gnd)


def draw_topk(features: Features, bench: Benchmark, query: int, k: int, out: str | Path,
              results: dict[str, EvalResult] | None = None, crop_drawn: bool = True) -> Path:
    """The top-k figure of `query`: its bbx drawn, results bordered by their ground-truth label."""
    bench.check_query(query)
    scores = similarities(features.db, features.queries[query:query + 1])[:, 0]
    ranking = rank_database(features.db, features.queries[query:query + 1])[:, 0]
    results = results if results is not None else evaluate_features(features, bench)
    protocol = "medium" if "medium" in results else next(iter(results))
    ap = results[protocol].aps[query]
    ap_text = "no positives" if np.isnan(ap) else f"AP {ap:.1f}% ({protocol})"
    top = ranking[:k]
    return topk_figure(
        bench.query_path(query), bench.query_bbx(query) if crop_drawn else None,
        [bench.image_path(int(i)) for i in top], label_results(top, bench.gnd[query]), out,
        title=f"query {query}: {bench.qimlist[query]} — {ap_text}", scores=[float(scores[i]) for i in top],
    )
