"""Benchmarks in revisitop format: loading, ground-truth conversion and download."""

from .convert import convert_gt, write_gnd
from .download import download
from .revisitop import Benchmark, load_benchmark
from .sources import BUILTIN_DATASETS

__all__ = ["Benchmark", "load_benchmark", "convert_gt", "write_gnd", "download", "BUILTIN_DATASETS"]
