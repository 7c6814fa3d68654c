"""The commands over a benchmark's descriptors: extract, eval, search, tsne, compression, robustness."""
from __future__ import annotations

import json
import sys


def descriptor_settings(args):
    """deepret.extract.ExtractSettings of the descriptor options (deepret.cli.parser._add_descriptor_options)."""
    from deepret.extract import ExtractSettings

    return ExtractSettings(size=args.size, scales=args.scales, flip=args.flip, precision=args.precision,
                           engine=args.engine, calibration=args.calibration and str(args.calibration),
                           upscale=args.upscale, round_to=args.round_to)


def run_options(args):
    """deepret.pipeline.RunOptions of the benchmark options (deepret.cli.parser._benchmark_parser)."""
    from deepret.imageio import DEFAULT_MAX_PIXELS
    from deepret.pipeline import RunOptions

    return RunOptions(descriptor_settings(args),
                      crop_queries=not args.no_crop, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                      device=args.device, workers=args.workers, progress=not args.quiet,
                      max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)


def benchmark_run(args):
    """The benchmark and its features (from the cache, or extracted), said on stderr."""
    from deepret.datasets import load_benchmark
    from deepret.models import get_model
    from deepret.pipeline import benchmark_features

    bench = load_benchmark(args.dataset, args.root)
    if getattr(args, "query", None) is not None:
        bench.check_query(args.query)
    net = get_model(args.model, weights=args.weights)
    features, path, cached = benchmark_features(net, bench, run_options(args))
    print(f"features: {path or 'not cached (--no-cache)'}{' (cached)' if cached else ''}, "
          f"size {features.meta['settings']['size']}, engine {features.meta['settings'].get('engine', 'torch')} "
          f"{features.meta['settings'].get('precision', 'fp32')}", file=sys.stderr)
    return bench, features


def cmd_extract(args) -> int:
    bench, features = benchmark_run(args)
    if args.out:
        features.save(args.out)
        print(f"wrote {args.out}")
    print(f"{bench.name}: {features.db.shape[0]} database and {features.queries.shape[0]} query descriptors "
          f"of dimension {features.db.shape[1]}")
    return 0


def cmd_eval(args) -> int:
    from deepret.evaluate import format_table, results_to_json
    from deepret.fileio import atomic_write_text
    from deepret.pipeline import draw_topk, evaluate_features

    if args.rerank:
        from deepret.rerank import parse_rerank

        args.rerank = parse_rerank(args.rerank).spec  # a bad spec fails before extraction
    bench, features = benchmark_run(args)
    results = evaluate_features(features, bench, rerank=args.rerank)
    print(f"{bench.name} — {features.meta['model']['name']} ({features.db.shape[1]}-d, {features.meta['model']['provenance']})"
          + (f", re-ranked by {args.rerank}" if args.rerank else ""))
    print(format_table(results))
    if args.factory:
        from deepret.pipeline import evaluate_factory

        approx = evaluate_factory(features, bench, args.factory, args.search_params)
        print(f"\nFAISS {args.factory}{' ' + args.search_params if args.search_params else ''} "
              f"(exact search above):")
        print(format_table(approx))
        for name, r in approx.items():
            print(f"{name}: mAP {r.map:.2f} vs exact {results[name].map:.2f}")
    if args.json:
        report = {"dataset": bench.name, "model": features.meta["model"], "settings": features.meta["settings"],
                  "rerank": args.rerank,
                  **results_to_json(results, qimlist=bench.qimlist)}
        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.figure:
        draw_topk(features, bench, args.query, args.topk, args.figure, results, crop_drawn=not args.no_crop,
                  rerank=args.rerank)  # the ranking whose AP `results` holds
        print(f"wrote {args.figure}")
    return 0


def cmd_search(args) -> int:
    from deepret.pipeline import draw_topk

    bench, features = benchmark_run(args)
    draw_topk(features, bench, args.query, args.topk, args.out, crop_drawn=not args.no_crop)
    print(f"wrote {args.out}")
    return 0


def cmd_tsne(args) -> int:
    from deepret.viz.tsne import tsne_plot

    bench, features = benchmark_run(args)
    tsne_plot(features, bench, args.out, seed=args.seed, unlabeled=args.unlabeled)
    print(f"wrote {args.out}")
    return 0


def cmd_compression(args) -> int:
    from deepret.compression import compression_study, default_factories, training_descriptors, write_compression_report
    from deepret.models import get_model

    bench, features = benchmark_run(args)
    sources = args.train_on.split(",") if args.train_on else []
    train = (training_descriptors(sources, args.root, get_model(args.model, weights=args.weights), run_options(args))
             if sources else features.db)
    factories = args.factories.split(";") if args.factories else default_factories(features.db.shape[1])
    rows = compression_study(features.db, features.queries, bench.gnd, train, factories, progress=not args.quiet)
    meta = {"dataset": bench.name, "model": features.meta["model"]["name"], "settings": features.meta["settings"],
            "train_on": sources or ["the database itself"], "train_vectors": len(train)}
    for path in write_compression_report(rows, meta, args.out):
        print(f"wrote {path}")
    return 0


def cmd_robustness(args) -> int:
    from deepret.datasets import load_benchmark
    from deepret.models import get_model
    from deepret.robustness import parse_transforms, robustness_study, write_robustness_report

    transforms = parse_transforms(args.transforms)
    bench = load_benchmark(args.dataset, args.root)
    report = robustness_study(get_model(args.model, weights=args.weights), bench, run_options(args), transforms)
    for path in write_robustness_report(report, args.out):
        print(f"wrote {path}")
    print(f"{len(report['transforms'])} query transforms x 2 descriptor settings in {report['seconds']:.0f} s")
    return 0
