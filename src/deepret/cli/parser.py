"""The `deepret` argument parser: every command's flags, the option groups they share defined once.

Imports no implementation: the defaults come from torch-free modules (deepret.models.registry,
deepret.train.config, deepret.study.config), and each command's handler (set as `handler`) imports
what it runs when it runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from deepret.argtypes import nonnegative_float, nonnegative_int, parse_box, parse_scales, positive_float, positive_int
from deepret.cli import benchmarks, data, index, serve, train
from deepret.errors import DeepretError


class _Parser(argparse.ArgumentParser):
    """argparse with deepret's one-line errors: `deepret: error: ...` and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"deepret: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _output_file(text: str) -> Path:
    """An output file named on the command line: its folder must exist (deepret.fileio.check_output)."""
    from deepret.fileio import check_output

    try:
        return check_output(text)
    except DeepretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _output_folder(text: str) -> Path:
    """An output folder named on the command line: deepret creates it, not the folders above it."""
    from deepret.fileio import check_output

    try:
        return check_output(text, folder=True)
    except DeepretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_precision(text: str) -> str:
    from deepret.precision import parse_precision  # torch-free: argparse applies it to the default too

    try:
        return parse_precision(text)
    except DeepretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_training_precision(text: str) -> str:
    value = _parse_precision(text)
    if value == "int8":
        raise argparse.ArgumentTypeError("int8 is for inference (--engine openvino): train in fp32, bf16 or fp16")
    return value


def _parse_engine(text: str) -> str:
    from deepret.precision import parse_engine  # torch-free

    try:
        return parse_engine(text)
    except DeepretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- option groups shared by several commands ---------------------------------------------------

def _add_precision_option(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--precision", type=_parse_precision, default=default,
                   help=f"auto, fp32, bf16, fp16 or int8 (default {default}; auto: fp32 on the openvino engine, "
                        "bf16/fp16 with torch where the hardware has it and the network keeps its mAP; int8: "
                        "openvino, calibrated on --calibration; see docs/benchmarks.md)")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", type=_parse_engine, default="auto",
                   help="auto (default: openvino on the CPU, torch on CUDA), torch or openvino")
    p.add_argument("--calibration", type=Path, default=None,
                   help="photos (a folder) that calibrate --precision int8; never the images evaluated")


def _add_index_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", type=_parse_precision, default="auto",
                   help="of the queries and new photos: auto (default: the index's own, or fp32 where that one "
                        "has no hardware support here), fp32, bf16 or fp16 (must match the index's, see docs/search.md)")


def _add_index_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", type=_parse_engine, default="auto",
                   help="of the queries and new photos: auto (default: openvino on the CPU, torch on CUDA and for "
                        "bf16/fp16 indexes), torch or openvino; fp32 indexes: both give the same descriptors")


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_workers_option(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--workers", type=nonnegative_int, default=default, help="image decoding processes")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from deepret.models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="a name from `deepret models` or a checkpoint path (deepret's or cirtorch's)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (default), random, or a state_dict file (for model names)")
    _add_device_option(p)


def _add_descriptor_options(p: argparse.ArgumentParser, max_pixels_help: str) -> None:
    """How images become descriptors (deepret.extract.ExtractSettings) and how they are decoded."""
    p.add_argument("--size", type=positive_int, default=None,
                   help="longest image side in pixels (default: the model's, see `deepret models`)")
    p.add_argument("--scales", type=parse_scales, default=(1.0,), help="e.g. 1,0.707,1.414 (default 1)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--upscale", action=argparse.BooleanOptionalAction, default=False,
                   help="enlarge images smaller than --size to it (default --no-upscale: keep their own size, as "
                        "cirtorch does; more accurate on both benchmarks, see docs/benchmarks.md)")
    p.add_argument("--round-to", type=positive_int, default=32,
                   help="round the shorter side to a multiple of this many pixels, so that more images share a "
                        "batch shape (default 32; 1 keeps the aspect ratio exactly, as cirtorch: docs/models.md)")
    _add_precision_option(p)
    _add_engine_options(p)
    p.add_argument("--max-pixels", type=positive_int, default=None, help=max_pixels_help)
    _add_workers_option(p)
    _add_quiet_option(p)


def _benchmark_parser(sub, name: str, help: str, handler) -> argparse.ArgumentParser:
    """A command over a benchmark's descriptors: model, benchmark, descriptor and cache options."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(handler=handler)
    _add_model_options(p)
    p.add_argument("--dataset", required=True, help="oxford5k, paris6k, roxford5k, rparis6k or any revisitop-format name")
    p.add_argument("--root", required=True, type=Path, help="folder holding <dataset>/gnd_<dataset>.pkl and jpg/")
    p.add_argument("--no-crop", action="store_true", help="do not crop queries to their bounding box")
    _add_descriptor_options(p, "refuse benchmark images with more pixels (default 100 Mpx: a decompression-bomb guard)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $DEEPRET_CACHE or ~/.cache/deepret)")
    p.add_argument("--no-cache", action="store_true", help="extract again, neither reading nor writing the cache")
    return p


# --- the commands ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepret", description="Instance-level image retrieval with CNN global descriptors.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback (with its causes) of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the registered model names").set_defaults(handler=data.cmd_models)

    p = _benchmark_parser(sub, "extract", "extract and save a benchmark's descriptors", benchmarks.cmd_extract)
    p.add_argument("--out", type=_output_file, default=None, help="also copy the features to this .npz file")

    p = _benchmark_parser(sub, "eval", "evaluate a model on a benchmark (mAP, mP@k, per-query AP)",
                          benchmarks.cmd_eval)
    p.add_argument("--json", type=_output_file, default=None, help="write mAP per protocol, mP@k and per-query AP here")
    p.add_argument("--figure", type=_output_file, default=None, help="write the top-k figure of --query here (PNG)")
    p.add_argument("--query", type=nonnegative_int, default=0, help="query index for --figure (default 0)")
    p.add_argument("--topk", type=positive_int, default=10, help="results in --figure (default 10)")
    p.add_argument("--factory", default=None, help="also evaluate a FAISS index, e.g. IVF64,Flat or HNSW32")
    p.add_argument("--search-params", default="", help="FAISS search parameters for --factory, e.g. nprobe=16")
    p.add_argument("--rerank", default=None, metavar="SPEC",
                   help="re-rank before evaluating, e.g. alpha-qe, dba+alpha-qe:n=5, diffusion (see docs/search.md)")

    p = _benchmark_parser(sub, "search", "draw a query and its top-K results", benchmarks.cmd_search)
    p.add_argument("--query", type=nonnegative_int, required=True, help="query index")
    p.add_argument("--topk", type=positive_int, default=10)
    p.add_argument("--out", type=_output_file, required=True, help="PNG file to write")

    _add_train_parsers(sub)
    _add_index_parsers(sub)
    _add_serve_parser(sub)

    p = sub.add_parser("whiten", help="learn PCA-whitening or Lw on labelled images, save a checkpoint")
    p.set_defaults(handler=train.cmd_whiten)
    _add_model_options(p)
    p.add_argument("--train", required=True, help="training images: class folders, a GLDv2 CSV or a list file")
    p.add_argument("--train-root", type=Path, default=None, help="image root for a CSV or list file")
    p.add_argument("--method", choices=("pca", "lw"), default="pca")
    p.add_argument("--dim", type=positive_int, default=None, help="output dimension (default: the descriptor's)")
    p.add_argument("--shrinkage", type=nonnegative_float, default=0.0, help="eigenvalue regularisation (x their mean)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="longest image side for the descriptors (default: the model's evaluation size)")
    _add_workers_option(p)
    _add_precision_option(p)
    p.add_argument("--out", required=True, type=_output_file, help="checkpoint to write")

    p = _benchmark_parser(sub, "tsne", "2-D t-SNE of a benchmark's database descriptors, coloured by landmark",
                          benchmarks.cmd_tsne)
    p.add_argument("--unlabeled", action="store_true", help="also draw images of no landmark, in grey")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_output_file, required=True, help="PNG file to write")

    p = sub.add_parser("triplets", help="draw the training tuples mined by `deepret train rank`")
    p.set_defaults(handler=train.cmd_triplets)
    p.add_argument("--run", type=Path, required=True, help="a `train rank` run folder (holds tuples.jsonl)")
    p.add_argument("--epoch", type=positive_int, default=None, help="default: the last epoch")
    p.add_argument("--n", type=positive_int, default=4, help="tuples to draw")
    p.add_argument("--out", type=_output_file, required=True, help="PNG file to write")

    from deepret.study.config import add_arguments as add_study_arguments

    p = sub.add_parser("study", help="compare the study's representations (1a-1i, with 1e-lw) on a benchmark, write report.html")
    p.set_defaults(handler=train.cmd_study)
    add_study_arguments(p)

    p = _benchmark_parser(sub, "compression", "mAP against bytes per vector: exact search, SQ, PQ and OPQ",
                          benchmarks.cmd_compression)
    p.add_argument("--train-on", default=None, help="train the quantizers on these, comma-separated: benchmark "
                   "names under --root or image folders (default: the database itself)")
    p.add_argument("--factories", default=None, help="FAISS factories separated by ';' (default: Flat, SQfp16, "
                   "SQ8, PQ/OPQ with 8-64 sub-quantizers of 4- and 8-bit codes)")
    p.add_argument("--out", type=_output_folder, required=True, help="folder for compression.json, .md and .png")

    p = _benchmark_parser(sub, "robustness", "mAP and per-query AP under flipped, rotated, downscaled and JPEG queries",
                          benchmarks.cmd_robustness)
    p.add_argument("--transforms", default=None, help="comma-separated subset of: original, flip, rotate 5, "
                   "rotate 10, rotate 90, rotate 180, downscale 1/2, 1/4, 1/8, jpeg 90, 50, 10 (default: all)")
    p.add_argument("--out", type=_output_folder, required=True, help="folder for robustness.json, .md and .png")

    p = sub.add_parser("download", help="download a benchmark's images and ground truth")
    p.set_defaults(handler=data.cmd_download)
    p.add_argument("name", help="oxford5k, paris6k, roxford5k or rparis6k")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--base-url", default=None, help="fetch every file from <base-url>/<file name> instead")

    p = sub.add_parser("convert-gt", help="official *_good/_ok/_junk/_query.txt files to gnd_<name>.pkl")
    p.set_defaults(handler=data.cmd_convert_gt)
    p.add_argument("gt_dir", type=Path)
    p.add_argument("--imlist", required=True, type=Path, help="image list: a text file (one name a line) or a jpg/ folder")
    p.add_argument("--out", required=True, type=_output_file)
    return parser


def _add_train_parsers(sub) -> None:
    from deepret.train.config import DEFAULT_MARGINS, PROJ_INITS, ClassifyOptions, RankOptions, train_config

    p = sub.add_parser("train", help="finetune a network as a classifier or for ranking")
    modes = p.add_subparsers(dest="mode", required=True)
    for mode, text in (("classify", "new classifier layer, cross-entropy"), ("rank", "triplet/contrastive loss")):
        d = train_config(mode)  # the defaults live in deepret.train.config
        p = modes.add_parser(mode, help=text)
        p.set_defaults(handler=train.cmd_train)
        _add_model_options(p)
        p.add_argument("--data", required=True, help="class folders, a GLDv2 CSV or a list file of `path label`")
        p.add_argument("--data-root", type=Path, default=None, help="image root for a CSV or list file")
        p.add_argument("--out", required=True, type=_output_folder, help="run folder: checkpoints, log.jsonl, loss.png")
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
        _add_workers_option(p, default=d.workers)
        p.add_argument("--val", default=d.val, help="benchmark to validate on, e.g. oxford5k-mini")
        p.add_argument("--val-root", type=Path, default=d.val_root)
        p.add_argument("--val-every", type=positive_int, default=d.val_every)
        p.add_argument("--val-size", type=positive_int, default=d.val_size,
                       help="validation image size (default: the model's evaluation size)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
        _add_quiet_option(p)
        p.add_argument("--precision", type=_parse_training_precision, default=d.precision,
                       help=f"fp32 (default {d.precision}), bf16 or fp16 autocast, or auto")
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
                           help="FC projection to DIM, initialised by --proj-init")
            p.add_argument("--proj-init", choices=PROJ_INITS, default=r.proj_init,
                           help="start of the projection: PCA-whitening (pca, at most images-1 dims) or "
                                "learned whitening on same-class pairs (lw)")
            p.add_argument("--proj-shrinkage", type=nonnegative_float, default=r.proj_shrinkage,
                           help="eigenvalue shrinkage of that start, x the mean eigenvalue (default 0 pca, 1 lw)")
            p.add_argument("--learn-p", action="store_true", help="learn the GeM exponent")
            p.add_argument("--multires", type=parse_scales, default=r.multires,
                           help="training scales, e.g. 0.75,1,1.25")


def _add_index_parsers(sub) -> None:
    actions = sub.add_parser("index", help="index a folder of photos and search it with any image").add_subparsers(
        dest="action", required=True)
    p = actions.add_parser("build", help="index every photo under PHOTOS (resumes an interrupted build)")
    p.set_defaults(handler=index.cmd_build)
    p.add_argument("photos", type=Path, help="folder of photos (jpg, jpeg, png, webp, bmp, tif; searched recursively)")
    p.add_argument("--index", required=True, type=_output_folder, help="index folder to write (its parent must exist)")
    _add_model_options(p)
    _add_descriptor_options(p, "skip larger images (default 100 Mpx)")
    p.add_argument("--factory", default="Flat", help="FAISS factory: Flat (exact, default), HNSW32, IVF1024,Flat, "
                                                     "IVF1024,PQ32, OPQ32,IVF1024,PQ32 ...")
    p.add_argument("--train-on", type=Path, default=None, help="train the factory's quantizers on these photos")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    p.add_argument("--uri", default=None, help="Milvus: ./photos.db (Milvus Lite) or http://HOST:19530")

    p = actions.add_parser("update", help="add new photos, re-extract changed ones, remove deleted ones")
    p.set_defaults(handler=index.cmd_update)
    p.add_argument("--index", required=True, type=Path)
    _add_device_option(p)
    _add_index_precision_option(p)
    _add_index_engine_option(p)
    _add_quiet_option(p)

    p = actions.add_parser("info", help="counts, model, factory, bytes per vector, skipped files")
    p.set_defaults(handler=index.cmd_info)
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = actions.add_parser("verify", help="check every file of the index (checksums, catalogue); one line per "
                                          "problem, exit status 2 if any")
    p.set_defaults(handler=index.cmd_verify)
    p.add_argument("--index", required=True, type=Path)

    p = actions.add_parser("repair", help="rebuild what is damaged from what is intact (re-extracts only photos "
                                          "whose descriptors were lost)")
    p.set_defaults(handler=index.cmd_repair)
    p.add_argument("--index", required=True, type=Path)
    _add_device_option(p)

    p = actions.add_parser("search", help="search the index with an image")
    p.set_defaults(handler=index.cmd_search)
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("image", type=Path, help="query photo")
    p.add_argument("--box", type=parse_box, default=None, help="x1,y1,x2,y2: search with this part of the photo")
    p.add_argument("--topk", type=positive_int, default=10)
    p.add_argument("--json", type=_output_file, default=None, help="write the results here")
    p.add_argument("--figure", type=_output_file, default=None, help="draw the query and its top K here (PNG)")
    p.add_argument("--rerank", default=None, metavar="SPEC",
                   help="re-rank, e.g. alpha-qe, dba+alpha-qe, diffusion (see docs/search.md)")
    _add_device_option(p)
    _add_index_precision_option(p)
    _add_index_engine_option(p)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="web app and HTTP API over an index (FastAPI under uvicorn)")
    p.set_defaults(handler=serve.cmd_serve)
    p.add_argument("--index", required=True, type=Path, help="an index folder made by `deepret index build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer T' on every API call "
                                                 "(default: $DEEPRET_TOKEN)")
    p.add_argument("--allow-uploads", action="store_true", help="let POST /api/images add photos to the collection")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20 MB)")
    _add_device_option(p)
    _add_index_precision_option(p)
    _add_index_engine_option(p)
