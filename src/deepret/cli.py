"""The `deepret` command: parses arguments and calls the library. Errors: one line, exit status 2."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from deepret.argtypes import nonnegative_float, nonnegative_int, parse_box, parse_scales, positive_float, positive_int
from deepret.errors import DeepretError
from deepret.models import DEFAULT_MODEL
from deepret.runtime import is_main_process


class _Parser(argparse.ArgumentParser):
    """argparse with deepret's one-line errors: `deepret: error: ...` and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"deepret: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _parse_precision(text: str) -> str:
    from deepret.precision import parse_precision

    try:
        return parse_precision(text)
    except DeepretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_precision_option(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--precision", type=_parse_precision, default=default,
                   help=f"auto, fp32, bf16 or fp16 (default {default}; auto: bf16/fp16 where the hardware has it "
                        "and the network keeps its mAP, see docs/benchmarks.md)")


def _add_index_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", type=_parse_precision, default="auto",
                   help="of the queries and new photos: auto (default: the index's own, or fp32 where that one "
                        "has no hardware support here), fp32, bf16 or fp16 (must match the index's, see docs/search.md)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="a name from `deepret models` or a checkpoint path")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (default), random, or a state_dict file (for model names)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_benchmark_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="oxford5k, paris6k, roxford5k, rparis6k or any revisitop-format name")
    p.add_argument("--root", required=True, type=Path, help="folder holding <dataset>/gnd_<dataset>.pkl and jpg/")
    p.add_argument("--size", type=positive_int, default=None,
                   help="longest image side in pixels (default: the model's, see `deepret models`)")
    p.add_argument("--scales", type=parse_scales, default=(1.0,), help="e.g. 1,0.707,1.414 (default 1)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--no-crop", action="store_true", help="do not crop queries to their bounding box")
    _add_no_upscale_option(p)
    p.add_argument("--workers", type=nonnegative_int, default=None, help="image decoding processes")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $DEEPRET_CACHE or ~/.cache/deepret)")
    p.add_argument("--no-cache", action="store_true", help="extract again, neither reading nor writing the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_precision_option(p)


def _add_no_upscale_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-upscale", action="store_true",
                   help="keep images smaller than --size at their own size, as cirtorch does (default: enlarge "
                        "them; see docs/benchmarks.md)")


def _add_max_pixels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="refuse benchmark images with more pixels (default 100 Mpx: a decompression-bomb guard)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepret", description="Instance-level image retrieval with CNN global descriptors.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback (with its causes) of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the registered model names")

    p = sub.add_parser("extract", help="extract and save a benchmark's descriptors")
    _add_model_options(p)
    _add_benchmark_options(p)
    _add_max_pixels_option(p)
    p.add_argument("--out", type=Path, default=None, help="also copy the features to this .npz file")

    p = sub.add_parser("eval", help="evaluate a model on a benchmark (mAP, mP@k, per-query AP)")
    _add_model_options(p)
    _add_benchmark_options(p)
    _add_max_pixels_option(p)
    p.add_argument("--json", type=Path, default=None, help="write mAP per protocol, mP@k and per-query AP here")
    p.add_argument("--figure", type=Path, default=None, help="write the top-k figure of --query here (PNG)")
    p.add_argument("--query", type=nonnegative_int, default=0, help="query index for --figure (default 0)")
    p.add_argument("--topk", type=positive_int, default=10, help="results in --figure (default 10)")
    p.add_argument("--factory", default=None, help="also evaluate a FAISS index, e.g. IVF64,Flat or HNSW32")
    p.add_argument("--search-params", default="", help="FAISS search parameters for --factory, e.g. nprobe=16")
    p.add_argument("--rerank", default=None, metavar="SPEC",
                   help="re-rank before evaluating, e.g. alpha-qe, dba+alpha-qe:n=5, diffusion (see docs/search.md)")

    p = sub.add_parser("search", help="draw a query and its top-K results")
    _add_model_options(p)
    _add_benchmark_options(p)
    _add_max_pixels_option(p)
    p.add_argument("--query", type=nonnegative_int, required=True, help="query index")
    p.add_argument("--topk", type=positive_int, default=10)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    _add_train_parsers(sub)
    _add_index_parsers(sub)
    _add_serve_parser(sub)

    p = sub.add_parser("whiten", help="learn PCA-whitening or Lw on labelled images, save a checkpoint")
    _add_model_options(p)
    p.add_argument("--train", required=True, help="training images: class folders, a GLDv2 CSV or a list file")
    p.add_argument("--train-root", type=Path, default=None, help="image root for a CSV or list file")
    p.add_argument("--method", choices=("pca", "lw"), default="pca")
    p.add_argument("--dim", type=positive_int, default=None, help="output dimension (default: the descriptor's)")
    p.add_argument("--shrinkage", type=nonnegative_float, default=0.0, help="eigenvalue regularisation (x their mean)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="longest image side for the descriptors (default: the model's evaluation size)")
    p.add_argument("--workers", type=nonnegative_int, default=None)
    _add_precision_option(p)
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write")

    p = sub.add_parser("tsne", help="2-D t-SNE of a benchmark's database descriptors, coloured by landmark")
    _add_model_options(p)
    _add_benchmark_options(p)
    _add_max_pixels_option(p)
    p.add_argument("--unlabeled", action="store_true", help="also draw images of no landmark, in grey")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    p = sub.add_parser("triplets", help="draw the training tuples mined by `deepret train rank`")
    p.add_argument("--run", type=Path, required=True, help="a `train rank` run folder (holds tuples.jsonl)")
    p.add_argument("--epoch", type=positive_int, default=None, help="default: the last epoch")
    p.add_argument("--n", type=positive_int, default=4, help="tuples to draw")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")

    from deepret.study.config import add_arguments as add_study_arguments

    p = sub.add_parser("study", help="compare the study's representations (1a-1i, with 1e-lw) on a benchmark, write report.html")
    add_study_arguments(p)

    p = sub.add_parser("compression", help="mAP against bytes per vector: exact search, SQ, PQ and OPQ")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--train-on", default=None, help="train the quantizers on these, comma-separated: benchmark "
                   "names under --root or image folders (default: the database itself)")
    p.add_argument("--factories", default=None, help="FAISS factories separated by ';' (default: Flat, SQfp16, "
                   "SQ8, PQ/OPQ with 8-64 sub-quantizers of 4- and 8-bit codes)")
    p.add_argument("--out", type=Path, required=True, help="folder for compression.json, .md and .png")

    p = sub.add_parser("robustness", help="mAP and per-query AP under flipped, rotated, downscaled and JPEG queries")
    _add_model_options(p)
    _add_benchmark_options(p)
    p.add_argument("--transforms", default=None, help="comma-separated subset of: original, flip, rotate 5, "
                   "rotate 10, rotate 90, rotate 180, downscale 1/2, 1/4, 1/8, jpeg 90, 50, 10 (default: all)")
    p.add_argument("--out", type=Path, required=True, help="folder for robustness.json, .md and .png")

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
    from deepret.train.losses import DEFAULT_MARGINS
    from deepret.train.runner import ClassifyOptions, RankOptions, train_config

    train = sub.add_parser("train", help="finetune a network as a classifier or for ranking")
    modes = train.add_subparsers(dest="mode", required=True)
    for mode, text in (("classify", "new classifier layer, cross-entropy"), ("rank", "triplet/contrastive loss")):
        d = train_config(mode)  # the defaults live in deepret.train.runner
        p = modes.add_parser(mode, help=text)
        _add_model_options(p)
        p.add_argument("--data", required=True, help="class folders, a GLDv2 CSV or a list file of `path label`")
        p.add_argument("--data-root", type=Path, default=None, help="image root for a CSV or list file")
        p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, log.jsonl, loss.png")
        p.add_argument("--epochs", type=positive_int, default=d.epochs)
        p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                       help="images (classify) or tuples (rank) per step")
        p.add_argument("--size", type=positive_int, default=d.size, help="training image side")
        p.add_argument("--lr", type=positive_float, default=d.lr)
        p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
        p.add_argument("--weight-decay", type=nonnegative_float, default=d.weight_decay)
        p.add_argument("--lr-decay", type=positive_float, default=d.lr_decay, help="learning rate factor per epoch")
        p.add_argument("--lr-mult", type=positive_float, default=d.lr_mult,
                       help="learning rate factor of the new layers and GeM p")
        p.add_argument("--augment", default=d.augment, help="e.g. all, none, crop,flip, crop=0.4:1,rotate=15")
        p.add_argument("--seed", type=int, default=d.seed)
        p.add_argument("--workers", type=nonnegative_int, default=d.workers)
        p.add_argument("--val", default=d.val, help="benchmark to validate on, e.g. oxford5k-mini")
        p.add_argument("--val-root", type=Path, default=d.val_root)
        p.add_argument("--val-every", type=positive_int, default=d.val_every)
        p.add_argument("--val-size", type=positive_int, default=d.val_size,
                       help="validation image size (default: the model's evaluation size)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
        p.add_argument("--quiet", action="store_true")
        _add_precision_option(p, default="fp32")
        if mode == "classify":
            c = ClassifyOptions()
            p.add_argument("--init", choices=("xavier", "kaiming"), default=c.init)
            p.add_argument("--freeze", type=nonnegative_int, default=c.freeze,
                           help="freeze the first N blocks of the backbone")
            p.add_argument("--val-fraction", type=nonnegative_float, default=c.val_fraction,
                           help="hold out images for accuracy")
        else:
            r = RankOptions()
            p.add_argument("--loss", choices=tuple(DEFAULT_MARGINS), default=r.loss)
            p.add_argument("--margin", type=nonnegative_float, default=r.margin,
                           help="default " + ", ".join(f"{v:g} ({k})" for k, v in DEFAULT_MARGINS.items()))
            p.add_argument("--negatives", type=positive_int, default=r.negatives, help="hard negatives per tuple")
            p.add_argument("--pool-size", type=positive_int, default=r.pool_size,
                           help="random pool to mine negatives from")
            p.add_argument("--queries", type=positive_int, default=r.queries, help="tuples per epoch")
            p.add_argument("--proj", type=positive_int, default=r.proj,
                           help="FC projection to DIM, initialised by PCA-whitening")
            p.add_argument("--learn-p", action="store_true", help="learn the GeM exponent")
            p.add_argument("--multires", type=parse_scales, default=r.multires,
                           help="training scales, e.g. 0.75,1,1.25")


def _add_index_parsers(sub) -> None:
    index = sub.add_parser("index", help="index a folder of photos and search it with any image")
    actions = index.add_subparsers(dest="action", required=True)
    p = actions.add_parser("build", help="index every photo under PHOTOS (resumes an interrupted build)")
    p.add_argument("photos", type=Path, help="folder of photos (jpg, jpeg, png, webp, bmp, tif; searched recursively)")
    p.add_argument("--index", required=True, type=Path, help="index folder to write")
    _add_model_options(p)
    p.add_argument("--size", type=positive_int, default=None, help="longest image side in pixels (default: the model's)")
    p.add_argument("--scales", type=parse_scales, default=(1.0,), help="e.g. 1,0.707,1.414 (default 1)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    _add_no_upscale_option(p)
    p.add_argument("--factory", default="Flat", help="FAISS factory: Flat (exact, default), HNSW32, IVF1024,Flat, "
                                                     "IVF1024,PQ32, OPQ32,IVF1024,PQ32 ...")
    p.add_argument("--train-on", type=Path, default=None, help="train the factory's quantizers on these photos")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    p.add_argument("--uri", default=None, help="Milvus: ./photos.db (Milvus Lite) or http://HOST:19530")
    p.add_argument("--max-pixels", type=positive_int, default=None, help="skip larger images (default 100 Mpx)")
    p.add_argument("--workers", type=nonnegative_int, default=None, help="image decoding processes")
    p.add_argument("--quiet", action="store_true")
    _add_precision_option(p)
    p = actions.add_parser("update", help="add new photos, re-extract changed ones, remove deleted ones")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--device", default=None)
    _add_index_precision_option(p)
    p.add_argument("--quiet", action="store_true")
    p = actions.add_parser("info", help="counts, model, factory, bytes per vector, skipped files")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser("search", help="search the index with an image")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("image", type=Path, help="query photo")
    p.add_argument("--box", type=parse_box, default=None, help="x1,y1,x2,y2: search with this part of the photo")
    p.add_argument("--topk", type=positive_int, default=10)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--figure", type=Path, default=None, help="draw the query and its top K here (PNG)")
    p.add_argument("--rerank", default=None, metavar="SPEC",
                   help="re-rank, e.g. alpha-qe, dba+alpha-qe, diffusion (see docs/search.md)")
    p.add_argument("--device", default=None)
    _add_index_precision_option(p)


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
    _add_index_precision_option(p)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, also after the command's own options
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return COMMANDS[args.command](args)
    except DeepretError as exc:
        if debug:
            traceback.print_exc()
        print(f"deepret: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepret: interrupted; finished files are kept, run the command again to go on", file=sys.stderr)
        return 130


def _cmd_models(args) -> int:
    from deepret.models import list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  size  weights")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['size']:>4}  {r['weights']}")
    print("\nsize: the default evaluation size (longest image side) when --size is not given.")
    print("\nAny convolutional timm model works too, as <timm name>-gem (e.g. convnext_tiny-gem).")
    return 0


def _run_options(args):
    from deepret.extract import ExtractSettings
    from deepret.imageio import DEFAULT_MAX_PIXELS
    from deepret.pipeline import RunOptions

    return RunOptions(ExtractSettings(size=args.size, scales=args.scales, flip=args.flip, precision=args.precision,
                                      upscale=not args.no_upscale),
                      crop_queries=not args.no_crop, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                      device=args.device, workers=args.workers, progress=not args.quiet,
                      max_pixels=getattr(args, "max_pixels", None) or DEFAULT_MAX_PIXELS)  # eval/extract/search/tsne


def _benchmark_run(args):
    from deepret.datasets import load_benchmark
    from deepret.models import get_model
    from deepret.pipeline import benchmark_features

    bench = load_benchmark(args.dataset, args.root)
    if getattr(args, "query", None) is not None:
        bench.check_query(args.query)
    net = get_model(args.model, weights=args.weights)
    features, path, cached = benchmark_features(net, bench, _run_options(args))
    print(f"features: {path or 'not cached (--no-cache)'}{' (cached)' if cached else ''}, "
          f"size {features.meta['settings']['size']}", file=sys.stderr)
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
    from deepret.fileio import atomic_write_text
    from deepret.pipeline import draw_topk, evaluate_features

    if args.rerank:
        from deepret.rerank import parse_rerank

        args.rerank = parse_rerank(args.rerank).spec  # a bad spec fails before extraction
    bench, features = _benchmark_run(args)
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


def _cmd_search(args) -> int:
    from deepret.pipeline import draw_topk

    bench, features = _benchmark_run(args)
    draw_topk(features, bench, args.query, args.topk, args.out, crop_drawn=not args.no_crop)
    print(f"wrote {args.out}")
    return 0


def _cmd_compression(args) -> int:
    from deepret.compression import (compression_study, default_factories, training_descriptors,
                                     write_compression_report)
    from deepret.models import get_model

    bench, features = _benchmark_run(args)
    sources = args.train_on.split(",") if args.train_on else []
    train = (training_descriptors(sources, args.root, get_model(args.model, weights=args.weights), _run_options(args))
             if sources else features.db)
    factories = args.factories.split(";") if args.factories else default_factories(features.db.shape[1])
    rows = compression_study(features.db, features.queries, bench.gnd, train, factories, progress=not args.quiet)
    meta = {"dataset": bench.name, "model": features.meta["model"]["name"], "settings": features.meta["settings"],
            "train_on": sources or ["the database itself"], "train_vectors": len(train)}
    for path in write_compression_report(rows, meta, args.out):
        print(f"wrote {path}")
    return 0


def _cmd_robustness(args) -> int:
    from deepret.datasets import load_benchmark
    from deepret.models import get_model
    from deepret.robustness import parse_transforms, robustness_study, write_robustness_report

    transforms = parse_transforms(args.transforms)
    bench = load_benchmark(args.dataset, args.root)
    report = robustness_study(get_model(args.model, weights=args.weights), bench, _run_options(args), transforms)
    for path in write_robustness_report(report, args.out):
        print(f"wrote {path}")
    print(f"{len(report['transforms'])} query transforms x 2 descriptor settings in {report['seconds']:.0f} s")
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
                      val_size=args.val_size, resume=args.resume, progress=not args.quiet,
                      precision=args.precision)
    if args.mode == "classify":
        last = train_classify(data, args.model, cfg, weights=args.weights, init=args.init, freeze=args.freeze,
                              val_fraction=args.val_fraction)
    else:
        last = train_rank(data, args.model, cfg, weights=args.weights, loss=args.loss, margin=args.margin,
                          negatives=args.negatives, pool_size=args.pool_size, queries=args.queries,
                          proj=args.proj, learn_p=args.learn_p, multires=args.multires)
    if is_main_process():
        print(f"wrote {last} (evaluate it with: deepret eval --model {last} --dataset ... --root ...)")
    return 0


def _cmd_whiten(args) -> int:
    from deepret.datasets import load_labelled
    from deepret.models import get_model, save
    from deepret.train.whitening import learn_whitening

    data = load_labelled(args.train, args.train_root)
    net = get_model(args.model, weights=args.weights)
    learn_whitening(net, data, args.method, args.dim, args.size, args.shrinkage, args.device, args.workers,
                    precision=args.precision)
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
                            settings=ExtractSettings(size=args.size, scales=args.scales, flip=args.flip,
                                                     precision=args.precision, upscale=not args.no_upscale),
                            factory=args.factory, backend=args.backend, uri=args.uri, train_on=args.train_on,
                            device=args.device, progress=not args.quiet, workers=args.workers,
                            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        if is_main_process():
            info = index.info()
            print(f"{args.index}: {info['images']} images indexed, {len(info['skipped'])} skipped "
                  f"(see `deepret index info --index {args.index}`)")
        return 0
    with Index.open(args.index, device=getattr(args, "device", None), precision=getattr(args, "precision", "auto")) as index:
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
            result = index.search(args.image, box=args.box, k=args.topk, rerank=args.rerank)
            for rank, hit in enumerate(result.hits, 1):
                print(f"{rank}\t{hit.score:.4f}\t{hit.path}")
            if args.json:
                from deepret.fileio import atomic_write_text

                atomic_write_text(args.json, json.dumps(
                    {"query": str(args.image), "box": args.box, "rerank": args.rerank, "total": result.total, "timings_ms": result.timings,
                     "hits": [{"id": h.id, "path": h.path, "score": h.score} for h in result.hits]}, indent=2))
                print(f"wrote {args.json}")
            if args.figure:
                from deepret.viz import topk_figure

                topk_figure(args.image, args.box, [index.root / h.path for h in result.hits],
                            ["result"] * len(result.hits), args.figure, title=f"{args.image.name} in {index.root.name}",
                            scores=[h.score for h in result.hits])
                print(f"wrote {args.figure}")
    return 0


def _cmd_serve(args) -> int:
    from deepret.serve import serve

    if args.max_upload_mb <= 0:
        raise DeepretError(f"--max-upload-mb {args.max_upload_mb:g}: give a size in MB above 0")
    serve(args.index, host=args.host, port=args.port, token=args.token, allow_uploads=args.allow_uploads,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), device=args.device,
          precision=args.precision)
    return 0


COMMANDS = {"models": _cmd_models, "extract": _cmd_extract, "eval": _cmd_eval, "search": _cmd_search,
            "download": _cmd_download, "convert-gt": _cmd_convert_gt, "train": _cmd_train, "whiten": _cmd_whiten,
            "study": _cmd_study, "compression": _cmd_compression, "robustness": _cmd_robustness,
            "tsne": _cmd_tsne, "triplets": _cmd_triplets, "index": _cmd_index, "serve": _cmd_serve}


if __name__ == "__main__":
    sys.exit(main())
