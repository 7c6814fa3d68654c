"""Saved descriptors: database and query features with their image lists and the model's meta.

Files are written atomically (deepret.fileio) and keyed by everything that changes a descriptor:
network weights and meta, extraction settings, the query crop flag, the dataset's resolved root,
name and image lists, each image's size and modification time, the query boxes, and the version of
the preprocessing code. A second run with the same inputs reuses them; a replaced photo, an edited
box or another copy of the dataset gets new ones.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepret.errors import DeepretError
from deepret.fileio import atomic_write_bytes
from deepret.models import RetrievalNet, model_fingerprint

if TYPE_CHECKING:
    from deepret.datasets import Benchmark

# Bump when decoding, cropping, resizing or normalising changes what a descriptor is (deepret.imageio,
# deepret.extract): cached features of the earlier code are then not served any more.
PREPROCESSING_VERSION = 2


@dataclass
class Features:
    """Descriptors of a benchmark: `db` (N, D) and `queries` (Q, D), rows L2-normalised."""

    db: np.ndarray
    queries: np.ndarray
    imlist: list[str]
    qimlist: list[str]
    meta: dict

    def save(self, path: str | Path) -> Path:
        """Write an .npz atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, db=self.db, queries=self.queries, imlist=np.array(self.imlist),
                 qimlist=np.array(self.qimlist), meta=np.array(json.dumps(self.meta)))
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Features:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["db"], z["queries"], z["imlist"].tolist(), z["qimlist"].tolist(),
                           json.loads(str(z["meta"])))
        except FileNotFoundError as exc:
            raise DeepretError(f"feature file {path} not found: run `deepret extract` first") from exc
        except Exception as exc:
            raise DeepretError(f"feature file {path} is unreadable ({exc.__class__.__name__}): delete it "
                               "and extract again") from exc


def default_cache_dir() -> Path:
    """$DEEPRET_CACHE, else ~/.cache/deepret."""
    return Path(os.environ.get("DEEPRET_CACHE", Path.home() / ".cache" / "deepret"))


def benchmark_state(bench: Benchmark, crop_queries: bool) -> dict:
    """What of a benchmark decides its descriptors: resolved root, name, image lists, every image's
    size and mtime (from stat), the query boxes (when queries are cropped)."""
    def stat(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    return {"root": str(Path(bench.root).resolve()), "dataset": bench.name,
            "imlist": list(bench.imlist), "qimlist": list(bench.qimlist),
            "images": [stat(bench.image_path(i)) for i in range(len(bench.imlist))],
            "queries": [stat(bench.query_path(q)) for q in range(len(bench.qimlist))],
            "boxes": [bench.query_bbx(q) for q in range(len(bench.qimlist))] if crop_queries else None}


def cache_path(cache_dir: str | Path, bench: Benchmark, net: RetrievalNet, settings: dict,
               crop_queries: bool) -> Path:
    """Where the features of `bench` under `net` and `settings` (resolved ExtractSettings.to_dict())
    live; the key covers everything that changes a descriptor (see the module docstring)."""
    key_data = [PREPROCESSING_VERSION, model_fingerprint(net), settings, crop_queries,
                benchmark_state(bench, crop_queries)]
    key = hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    safe_model = net.meta["name"].replace("/", "_")
    return Path(cache_dir) / "features" / bench.name / f"{safe_model}-{key}.npz"
