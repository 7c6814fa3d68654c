"""Benchmarks in revisitop format (loading, ground-truth conversion, download) and class-labelled
training images (folder, GLDv2 CSV or list file)."""

from .convert import convert_gt, write_gnd
from .download import download
from .labelled import LabelledImages, load_labelled, rankable, split
from .revisitop import Benchmark, load_benchmark
from .sources import BUILTIN_DATASETS

__all__ = ["Benchmark", "load_benchmark", "convert_gt", "write_gnd", "download", "BUILTIN_DATASETS",
           "LabelledImages", "load_labelled", "rankable", "split"]
