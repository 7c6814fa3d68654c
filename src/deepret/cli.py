"""The `deepret` command: parses arguments and calls the library. Errors: one line, exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deepret.errors import DeepretError
from deepret.models import DEFAULT_MODEL


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: give numbers separated by commas, e.g. 1,0.707,1.414")
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--scales {text!r}: every scale must be > 0")
    return scales


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="a name from `deepret models` or a checkpoint path")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (default), random, or a state_dict file (for model names)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_benchmark_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="oxford5k, paris6k, roxford5k, rparis6k or any revisitop-format name")
    p.add_argument("--root", required=True, type=Path, help="folder holding <dataset>/gnd_<dataset>.pkl and jpg/")
    p.add_argument("--size", type=int, default=1024, help="longest image side in pixels (default 1024)")
    p.add_argument("--scales", type=_parse_scales, default=(1.0,), help="e.g. 1,0.707,1.414 (default 1)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--no-crop", action="store_true", help="do not crop queries to their bounding box")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $DEEPRET_CACHE or ~/.cache/deepret)")
    p.add_argument("--no-cache", action="store_true", help="extract again even if cached features exist")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepret", description="Instance-level image retrieval with CNN global descriptors.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the registered model names")

    p = sub.add_parser("extract", help="extract and save a benchmark's descriptors")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--out", type=Path, default=None, help="also copy the features to this .npz file")

    p = sub.add_parser("eval", help="evaluate a model on a benchmark (mAP, mP@k, per-query AP)")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--json", type=Path, default=None, help="write mAP per protocol, mP@k and per-query AP here")
    p.add_argument("--figure", type=Path, default=None, help="write the top-k figure of --query here (PNG)")
    p.add_argument("--query", type=int, default=0, help="query index for --figure (default 0)")
    p.add_argument("--topk", type=int, default=10, help="results in --figure (default 10)")
    p.add_argument("--factory", default=None, help="also evaluate a FAISS index, e.g. IVF64,Flat or HNSW32")
    p.add_argument("--search-params", default="", help="FAISS search parameters for --factory, e.g. nprobe=16")

    p = sub.add_parser("search", help="draw a query and its top-K results")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--query", type=int, required=True, help="query index")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    _add_train_parsers(sub)
    _add_index_parsers(sub)
    _add_serve_parser(sub)

    p = sub.add_parser("whiten", help="learn PCA-whitening or Lw on labelled images, save a checkpoint")
    _add_model_options(p)
    p.add_argument("--train", required=True, help="training images: class folders, a GLDv2 CSV or a list file")
    p.add_argument("--train-root", type=Path, default=None, help="image root for a CSV or list file")
    p.add_argument("--method", choices=("pca", "lw"), default="pca")
    p.add_argument("--dim", type=int, default=None, help="output dimension (default: the descriptor's)")
    p.add_argument("--shrinkage", type=float, default=0.0, help="eigenvalue regularisation (x their mean)")
    p.add_argument("--size", type=int, default=512, help="longest image side for the descriptors")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")

    p = sub.add_parser("tsne", help="2-D t-SNE of a benchmark's database descriptors, coloured by landmark")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--unlabeled", action="store_true", help="also draw images of no landmark, in grey")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    p = sub.add_parser("triplets", help="draw the training tuples mined by `deepret train rank`")
    p.add_argument("--run", type=Path, required=True, help="a `train rank` run folder (holds tuples.jsonl)")
    p.add_argument("--epoch", type=int, default=None, help="default: the last epoch")
    p.add_argument("--n", type=int, default=4, help="tuples to draw")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    from deepret.study.config import add_arguments as add_study_arguments

    p = sub.add_parser("study", help="compare the nine representations (1a-1i) on a benchmark, write report.html")
    add_study_arguments(p)

    p = sub.add_parser("download", help="download a benchmark's images and ground truth")
    p.add_argument("name", help="oxford5k, paris6k, roxford5k or rparis6k")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--base-url", default=None, help="fetch every file from <base-url>/<file name> instead")

    p = sub.add_parser("convert-gt", help="official *_good/_ok/_junk/_query.txt files to gnd_<name>.pkl")
    p.add_argument("gt_dir", type=Path)
    p.add_argument("--imlist", required=True, type=Path, help="image list: a text file (one name a line) or a jpg/ folder")
    p.add_argument("--out", required=True, type=Path)
    return parser


def _add_train_parsers(sub) -> None:
    train = sub.add_parser("train", help="finetune a network as a classifier or for ranking")
    modes = train.add_subparsers(dest="mode", required=True)
    for mode, text in (("classify", "new classifier layer, cross-entropy"), ("rank", "triplet/contrastive loss")):
        p = modes.add_parser(mode, help=text)
        _add_model_options(p)
        p.add_argument("--data", required=True, help="class folders, a GLDv2 CSV or a list file of `path label`")
        p.add_argument("--data-root", type=Path, default=None, help="image root for a CSV or list file")
        p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, log.jsonl, loss.png")
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--batch-size", type=int, default=8 if mode == "classify" else 4,
                       help="images (classify) or tuples (rank) per step")
        p.add_argument("--size", type=int, default=224 if mode == "classify" else 362, help="training image side")
        p.add_argument("--lr", type=float, default=1e-3 if mode == "classify" else 1e-6)
        p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
        p.add_argument("--weight-decay", type=float, default=1e-6)
        p.add_argument("--lr-decay", type=float, default=0.99, help="learning rate factor per epoch")
        p.add_argument("--lr-mult", type=float, default=10.0, help="learning rate factor of the new layers and GeM p")
        p.add_argument("--augment", default="none", help="e.g. all, none, crop,flip, crop=0.4:1,rotate=15")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=0)
        p.add_argument("--val", default=None, help="benchmark to validate on, e.g. oxford5k-mini")
        p.add_argument("--val-root", type=Path, default=None)
        p.add_argument("--val-every", type=int, default=1)
        p.add_argument("--val-size", type=int, default=512)
        p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
        p.add_argument("--quiet", action="store_true")
        if mode == "classify":
            p.add_argument("--init", choices=("xavier", "kaiming"), default="xavier")
            p.add_argument("--freeze", type=int, default=0, help="freeze the first N blocks of the backbone")
            p.add_argument("--val-fraction", type=float, default=0.0, help="hold out images for accuracy")
        else:
            p.add_argument("--loss", choices=("triplet", "contrastive"), default="triplet")
            p.add_argument("--margin", type=float, default=None, help="default 0.1 (triplet), 0.7 (contrastive)")
            p.add_argument("--negatives", type=int, default=5, help="hard negatives per tuple")
            p.add_argument("--pool-size", type=int, default=200, help="random pool to mine negatives from")
            p.add_argument("--queries", type=int, default=100, help="tuples per epoch")
            p.add_argument("--proj", type=int, default=None, help="FC projection to DIM, initialised by PCA-whitening")
            p.add_argument("--learn-p", action="store_true", help="learn the GeM exponent")
            p.add_argument("--multires", type=_parse_scales, default=(1.0,), help="training scales, e.g. 0.75,1,1.25")


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise argparse.ArgumentTypeError(f"--box {text!r}: give x1,y1,x2,y2 with x2 > x1 and y2 > y1")
    return box


def _add_index_parsers(sub) -> None:
    index = sub.add_parser("index", help="index a folder of photos and search it with any image")
    actions = index.add_subparsers(dest="action", required=True)
    p = actions.add_parser("build", help="index every photo under PHOTOS (resumes an interrupted build)")
    p.add_argument("photos", type=Path, help="folder of photos (jpg, jpeg, png, webp, bmp, tif; searched recursively)")
    p.add_argument("--index", required=True, type=Path, help="index folder to write")
    _add_model_options(p)
    p.add_argument("--size", type=int, default=None, help="longest image side in pixels (default: the model's)")
    p.add_argument("--scales", type=_parse_scales, default=(1.0,), help="e.g. 1,0.707,1.414 (default 1)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--factory", default="Flat", help="FAISS factory: Flat (exact, default), HNSW32, IVF1024,Flat, "
                                                     "IVF1024,PQ32, OPQ32,IVF1024,PQ32 ...")
    p.add_argument("--train-on", type=Path, default=None, help="train the factory's quantizers on these photos")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    p.add_argument("--uri", default=None, help="Milvus: ./photos.db (Milvus Lite) or http://HOST:19530")
    p.add_argument("--max-pixels", type=int, default=None, help="skip larger images (default 100 Mpx)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes")
    p.add_argument("--quiet", action="store_true")
    p = actions.add_parser("update", help="add new photos, re-extract changed ones, remove deleted ones")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p = actions.add_parser("info", help="counts, model, factory, bytes per vector, skipped files")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser("search", help="search the index with an image")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("image", type=Path, help="query photo")
    p.add_argument("--box", type=_parse_box, default=None, help="x1,y1,x2,y2: search with this part of the photo")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--figure", type=Path, default=None, help="draw the query and its top K here (PNG)")
    p.add_argument("--device", default=None)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="web app and HTTP API over an index (FastAPI under uvicorn)")
    p.add_argument("--index", required=True, type=Path, help="an index folder made by `deepret index build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer T' on every API call "
                                                 "(default: $DEEPRET_TOKEN)")
    p.add_argument("--allow-uploads", action="store_true", help="let POST /api/images add photos to the collection")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20 MB)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DeepretError as exc:
        print(f"deepret: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepret: interrupted; finished files are kept, run the command again to go on", file=sys.stderr)
        return 130


def _cmd_models(args) -> int:
    from deepret.models import list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  weights")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['weights']}")
    print("\nAny convolutional timm model works too, as <timm name>-gem (e.g. convnext_tiny-gem).")
    return 0


def _benchmark_run(args):
    from deepret.datasets import load_benchmark
    from deepret.extract import ExtractSettings
    from deepret.models import get_model
    from deepret.pipeline import RunOptions, benchmark_features

    bench = load_benchmark(args.dataset, args.root)
    if getattr(args, "query", None) is not None:
        bench.check_query(args.query)
    net = get_model(args.model, weights=args.weights)
    opts = RunOptions(ExtractSettings(size=args.size, scales=args.scales, flip=args.flip),
                      crop_queries=not args.no_crop, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                      device=args.device, workers=args.workers, progress=not args.quiet)
    features, path, cached = benchmark_features(net, bench, opts)
    print(f"features: {path}{' (cached)' if cached else ''}", file=sys.stderr)
    return bench, features


def _cmd_extract(args) -> int:
    bench, features = _benchmark_run(args)
    if args.out:
        features.save(args.out)
        print(f"wrote {args.out}")
    print(f"{bench.name}: {features.db.shape[0]} database and {features.queries.shape[0]} query descriptors "
          f"of dimension {features.db.shape[1]}")
    return 0


def _cmd_eval(args) -> int:
    from deepret.evaluate import format_table, results_to_json
    from deepret.features import atomic_write_bytes
    from deepret.pipeline import draw_topk, evaluate_features

    bench, features = _benchmark_run(args)
    results = evaluate_features(features, bench)
    print(f"{bench.name} — {features.meta['model']['name']} ({features.db.shape[1]}-d, {features.meta['model']['provenance']})")
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
                  **results_to_json(results, qimlist=bench.qimlist)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.json, json.dumps(report, indent=2).encode())
        print(f"wrote {args.json}")
    if args.figure:
        draw_topk(features, bench, args.query, args.topk, args.figure, results, crop_drawn=not args.no_crop)
        print(f"wrote {args.figure}")
    return 0


def _cmd_search(args) -> int:
    from deepret.pipeline import draw_topk

    bench, features = _benchmark_run(args)
    draw_topk(features, bench, args.query, args.topk, args.out, crop_drawn=not args.no_crop)
    print(f"wrote {args.out}")
    return 0


def _cmd_download(args) -> int:
    from deepret.datasets import download

    download(args.name, args.root, base_url=args.base_url)
    print(f"{args.name} is ready in {args.root / args.name}")
    return 0


def _cmd_convert_gt(args) -> int:
    from deepret.datasets import convert_gt, write_gnd

    write_gnd(convert_gt(args.gt_dir, args.imlist), args.out)
    print(f"wrote {args.out}")
    return 0


def _cmd_train(args) -> int:
    from deepret.datasets import load_labelled
    from deepret.train import TrainConfig, train_classify, train_rank

    data = load_labelled(args.data, args.data_root)
    cfg = TrainConfig(out=args.out, epochs=args.epochs, batch_size=args.batch_size, size=args.size, lr=args.lr,
                      optimizer=args.optimizer, weight_decay=args.weight_decay, lr_decay=args.lr_decay,
                      lr_mult=args.lr_mult, augment=args.augment, seed=args.seed, device=args.device,
                      workers=args.workers, val=args.val, val_root=args.val_root, val_every=args.val_every,
                      val_size=args.val_size, resume=args.resume, progress=not args.quiet)
    if args.mode == "classify":
        last = train_classify(data, args.model, cfg, weights=args.weights, init=args.init, freeze=args.freeze,
                              val_fraction=args.val_fraction)
    else:
        last = train_rank(data, args.model, cfg, weights=args.weights, loss=args.loss, margin=args.margin,
                          negatives=args.negatives, pool_size=args.pool_size, queries=args.queries,
                          proj=args.proj, learn_p=args.learn_p, multires=args.multires)
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {last} (evaluate it with: deepret eval --model {last} --dataset ... --root ...)")
    return 0


def _cmd_whiten(args) -> int:
    from deepret.datasets import load_labelled
    from deepret.models import get_model, save
    from deepret.train.whitening import learn_whitening

    data = load_labelled(args.train, args.train_root)
    net = get_model(args.model, weights=args.weights)
    learn_whitening(net, data, args.method, args.dim, args.size, args.shrinkage, args.device, args.workers)
    save(net, args.out)
    print(f"wrote {args.out}: {net.meta['name']} + {args.method} whitening to {net.dim}-d, learned on {len(data)} images")
    return 0


def _cmd_tsne(args) -> int:
    from deepret.viz.tsne import tsne_plot

    bench, features = _benchmark_run(args)
    tsne_plot(features, bench, args.out, seed=args.seed, unlabeled=args.unlabeled)
    print(f"wrote {args.out}")
    return 0


def _cmd_triplets(args) -> int:
    from deepret.viz.triplets import triplets_figure

    triplets_figure(args.run / "tuples.jsonl", args.out, epoch=args.epoch, n=args.n)
    print(f"wrote {args.out}")
    return 0


def _cmd_study(args) -> int:
    from deepret.study import config_from_args, run_study

    report = run_study(config_from_args(args))
    print(f"wrote {report} (and results.json beside it)")
    return 0


def _cmd_index(args) -> int:
    from deepret.index import Index, build_index

    if args.action == "build":
        from deepret.extract import ExtractSettings
        from deepret.imageio import DEFAULT_MAX_PIXELS

        index = build_index(args.photos, args.index, model=args.model, weights=args.weights,
                            settings=ExtractSettings(size=args.size, scales=args.scales, flip=args.flip),
                            factory=args.factory, backend=args.backend, uri=args.uri, train_on=args.train_on,
                            device=args.device, progress=not args.quiet, workers=args.workers,
                            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        if os.environ.get("RANK", "0") == "0":
            info = index.info()
            print(f"{args.index}: {info['images']} images indexed, {len(info['skipped'])} skipped "
                  f"(see `deepret index info --index {args.index}`)")
        return 0
    with Index.open(args.index, device=getattr(args, "device", None)) as index:
        if args.action == "update":
            report = index.update(progress=not args.quiet)
            print(f"{args.index}: {report.added} added, {report.changed} changed, {report.removed} removed, "
                  f"{len(report.skipped)} skipped, {len(index)} images")
            for s in report.skipped:
                print(f"  skipped {s['path']}: {s['reason']}")
        elif args.action == "info":
            info = index.info()
            if args.json:
                print(json.dumps(info, indent=2))
                return 0
            for key in ("root", "images", "model", "fingerprint", "settings", "dim", "factory", "backend",
                        "bytes_per_vector"):
                print(f"{key}: {info[key]}")
            print(f"skipped: {len(info['skipped'])}")
            for s in info["skipped"]:
                print(f"  {s['path']}: {s['reason']}")
        else:
            result = index.search(args.image, box=args.box, k=args.topk)
            for rank, hit in enumerate(result.hits, 1):
                print(f"{rank}\t{hit.score:.4f}\t{hit.path}")
            if args.json:
                from deepret.fileio import atomic_write_text

                atomic_write_text(args.json, json.dumps(
                    {"query": str(args.image), "box": args.box, "total": result.total, "timings_ms": result.timings,
                     "hits": [{"id": h.id, "path": h.path, "score": h.score} for h in result.hits]}, indent=2))
                print(f"wrote {args.json}")
            if args.figure:
                from deepret.viz import topk_figure

                topk_figure(args.image, args.box, [index.root / h.path for h in result.hits],
                            ["result"] * len(result.hits), args.figure, title=f"{args.image.name} in {index.root.name}",
                            scores=[h.score for h in result.hits])
                print(f"wrote {args.figure}")


def _cmd_serve(args) -> int:
    from deepret.serve import serve

    if args.max_upload_mb <= 0:
        raise DeepretError(f"--max-upload-mb {args.max_upload_mb:g}: give a size in MB above 0")
    serve(args.index, host=args.host, port=args.port, token=args.token, allow_uploads=args.allow_uploads,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), device=args.device)
    return 0


COMMANDS = {"models": _cmd_models, "extract": _cmd_extract, "eval": _cmd_eval, "search": _cmd_search,
            "download": _cmd_download, "convert-gt": _cmd_convert_gt, "train": _cmd_train, "whiten": _cmd_whiten,
            "study": _cmd_study, "tsne": _cmd_tsne, "triplets": _cmd_triplets,
            "index": _cmd_index}
COMMANDS["serve"] = _cmd_serve


if __name__ == "__main__":
    sys.exit(main())
