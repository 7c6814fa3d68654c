"""An open index: describe a query with the index's own model, search it, map ids to photos, update it.

`Index.open(DIR)` reads the catalogue and loads the vector backend; every search first checks the
catalogue's version (one small query) and picks up what another process committed since, so a
long-running searcher (the web app) sees updates without reopening. Methods are thread-safe.

Opening checks the catalogue's small tables (PRAGMA quick_check) and the vector file (size, header,
stamp: deepret.index.checks); damage is a DeepretError naming the file and `deepret index repair`
(deepret.index.integrity), never wrong results.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings, extract
from deepret.index.backends import open_backend
from deepret.index.build import ExtractJob, build_folder
from deepret.index.checks import fault_point
from deepret.index.identity import stored_settings
from deepret.index.info import describe, open_catalogue
from deepret.index.lock import writer_lock
from deepret.index.reranking import IndexReranking
from deepret.index.update import UpdateReport, find_changes
from deepret.models import RetrievalNet, get_model, model_fingerprint
from deepret.precision import (
    interchangeable,
    parse_engine,
    parse_precision,
    portable_precision,
    resolve_engine,
    resolve_precision,
)
from deepret.runtime import default_device

BBox = Sequence[float]


@dataclass
class SearchHit:
    id: int
    path: str  # relative to Index.root, '/' separators
    score: float

    def to_dict(self, rounded: bool = False) -> dict:
        score = float(self.score)
        return {"id": int(self.id), "path": self.path, "score": round(score, 6) if rounded else score}


@dataclass
class SearchResult:
    hits: list[SearchHit]
    total: int  # images in the index
    timings: dict[str, float]  # milliseconds: "describe", "search", "rerank" (those that ran)

    def to_dict(self, rounded: bool = False) -> dict:
        """JSON-ready {"total", "timings_ms", "hits": [{"id", "path", "score"}]}; `rounded`: scores to 6
        digits and milliseconds to 2 (as the web app answers), else exact (as `index search --json` writes)."""
        timings = {name: float(ms) for name, ms in self.timings.items()}
        return {"total": int(self.total),
                "timings_ms": {name: round(ms, 2) for name, ms in timings.items()} if rounded else timings,
                "hits": [h.to_dict(rounded) for h in self.hits]}


class Index:
    """A built index folder: catalogue.sqlite + vector backend."""

    def __init__(self, index_dir: str | Path, device: str | None = None, precision: str = "auto",
                 engine: str = "auto") -> None:
        self.catalogue, self.meta = open_catalogue(index_dir)
        self.lock = threading.RLock()
        self.root = Path(self.meta["root"])
        self.device, self.precision, self.engine = device, parse_precision(precision), parse_engine(engine)
        self.settings = stored_settings(self.meta["settings"])
        self.backend = open_backend(self.catalogue)
        self._net: RetrievalNet | None = None
        self._version = -1
        self.reranking = IndexReranking(self.catalogue.dir, self._snapshot)
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, index_dir: str | Path, device: str | None = None, precision: str = "auto",
             engine: str = "auto") -> Index:
        """`precision`: of the queries and updates; auto: the stored one, or fp32 where that one is
        emulated (deepret.precision.portable_precision); another: checked to match the stored one.
        `engine`: auto, torch or openvino (any of them for fp32 indexes: the same descriptors;
        int8 only on openvino, bf16/fp16 only on torch)."""
        return cls(index_dir, device, precision, engine)

    # --- state
    def refresh(self) -> None:
        """Pick up changes committed by any process since the last look."""
        with self.lock, self.catalogue.guard():
            version = self.catalogue.version()
            if version != self._version:
                self.backend.refresh(self.catalogue)
                self.meta = self.catalogue.all_meta()
                self._version = version

    def backend_publish(self) -> None:
        """After a committed change: let the backend catch up (a new FAISS file when due, Milvus sync)."""
        self.backend.publish(self.catalogue)

    def load_model(self) -> RetrievalNet:
        """The index's network, loaded once; refused if its weights changed since the build."""
        with self.lock:
            if self._net is None:
                net = get_model(self.meta["model"], weights=self.meta.get("weights", "imagenet"))
                if model_fingerprint(net) != self.meta["fingerprint"]:
                    raise DeepretError(f"model {self.meta['model']} is not the one index {self.catalogue.dir} was "
                                       "built with (its weights differ): restore that model or build a new index")
                self._net = net
            return self._net

    def use_model(self, net: RetrievalNet) -> None:
        """Use this already loaded network (checked to be the index's own) instead of loading it again."""
        self.check_model(net)
        with self.lock:
            self._net = net

    def check_model(self, net: RetrievalNet) -> None:
        """Refuse descriptors from another model than the index's."""
        if model_fingerprint(net) != self.meta["fingerprint"]:
            raise DeepretError(f"model {net.meta['name']} is not index {self.catalogue.dir}'s model "
                               f"({self.meta['model_name']}): query and update with the index's own model")

    def run_settings(self, net: RetrievalNet) -> ExtractSettings:
        """The stored extraction settings, in the precision and engine to use on this device
        (deepret.precision.portable_precision: fp32 here for a bf16 index built on a bf16 CPU; the
        engine `auto` means for that precision: torch and OpenVINO give the same fp32 descriptors,
        int8 stays on OpenVINO)."""
        device = self.device if self.device is not None else default_device()
        stored, backbone = self.settings.precision, net.meta.get("backbone")
        if self.precision == "auto":
            precision = portable_precision(stored, backbone, device)
        elif not interchangeable(self.precision, stored, backbone):
            raise DeepretError(f"index {self.catalogue.dir} holds {stored} descriptors of {backbone}, and {self.precision} "
                               f"is not measured to give the same ranking: use --precision auto or {stored}")
        else:
            precision = self.precision
        engine = self.engine
        if precision == "int8":
            if engine == "torch":
                raise DeepretError(f"index {self.catalogue.dir} holds int8 descriptors, which only the openvino engine "
                                   "computes: use --engine auto or openvino")
            engine = "openvino"
        elif precision in ("bf16", "fp16") and engine == "openvino":
            raise DeepretError(f"index {self.catalogue.dir} holds {precision} descriptors, which only the torch engine "
                               "computes: use --engine auto or torch, or --precision fp32 where it is interchangeable")
        engine = resolve_engine(engine, device, precision)
        return replace(self.settings, engine=engine,
                       precision=resolve_precision(precision, backbone, device, engine=engine))

    # --- queries
    def describe(self, image: str | Path | Image.Image, box: BBox | None = None) -> np.ndarray:
        """(D,) float32 descriptor of `image` (cropped to `box`, upright coordinates), index's settings;
        a PIL image is decoded as deepret.imageio.ImageSource says (as its file when not loaded yet)."""
        net = self.load_model()
        return extract(net, [image], [box] if box is not None else None, settings=self.run_settings(net),
                       device=self.device, workers=0, progress=False, upright=True,
                       max_pixels=self.meta.get("max_pixels")).vectors[0]

    def search(self, image: str | Path | Image.Image, box: BBox | None = None, k: int = 10, offset: int = 0,
               rerank: str | None = None) -> SearchResult:
        start = time.perf_counter()
        v = self.describe(image, box)
        result = self.search_vector(v, k, offset, rerank)
        spent = (time.perf_counter() - start) * 1e3
        result.timings = {"describe": spent - sum(result.timings.values()), **result.timings}
        return result

    def search_id(self, image_id: int, box: BBox | None = None, k: int = 10, offset: int = 0,
                  rerank: str | None = None) -> SearchResult:
        if box is not None:
            return self.search(self.path_of(image_id), box, k, offset, rerank)
        return self.search_vector(self.vector_of(image_id), k, offset, rerank)

    def search_vector(self, v: np.ndarray, k: int = 10, offset: int = 0, rerank: str | None = None) -> SearchResult:
        """Top k after the first `offset` results; `rerank`: a deepret.rerank spec (e.g. "alpha-qe",
        "dba+alpha-qe", "diffusion") applied over the stored descriptors (exact, whatever the factory)."""
        if k < 1 or offset < 0:
            raise DeepretError(f"k={k}, offset={offset}: k must be >= 1 and offset >= 0")
        v = np.asarray(v, dtype=np.float32).reshape(1, -1)
        if v.shape[1] != self.meta["dim"]:
            raise DeepretError(f"a {v.shape[1]}-d query for index {self.catalogue.dir} of {self.meta['dim']}-d "
                               f"vectors ({self.meta['model_name']}): query with the index's own model")
        if rerank:
            return self._reranked(v, k, offset, rerank)
        start = time.perf_counter()
        with self.lock:
            self.refresh()
            scores, ids = self.backend.search(v, k + offset)
            found = [(int(i), float(s)) for i, s in zip(ids[0][offset:], scores[0][offset:]) if i >= 0]
            paths = self._paths([i for i, _ in found])
            total = len(self)
        hits = [SearchHit(i, paths[i], s) for i, s in found if i in paths]
        return SearchResult(hits, total, {"search": (time.perf_counter() - start) * 1e3})

    def _reranked(self, v: np.ndarray, k: int, offset: int, spec: str) -> SearchResult:
        start = time.perf_counter()
        with self.lock:
            self.refresh()
            version = self._version
        reranker, row_ids = self.reranking.get(spec, version)
        scores, rows = reranker.rerank(None, v, k + offset)
        found = [(int(row_ids[r]), float(s)) for r, s in zip(rows[0][offset:], scores[0][offset:])]
        with self.lock:
            paths = self._paths([i for i, _ in found])
            total = len(self)
        hits = [SearchHit(i, paths[i], s) for i, s in found if i in paths]
        return SearchResult(hits, total, {"rerank": (time.perf_counter() - start) * 1e3})

    def _snapshot(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(catalogue version, ids, descriptors) read in one snapshot."""
        with self.lock, self.catalogue.read():
            ids, x, _ = self.catalogue.vectors(self.meta["dim"])
            return self.catalogue.version(), ids, x

    def _paths(self, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.catalogue.guard():
            return dict(self.catalogue.db.execute(
                f"SELECT id, path FROM files WHERE status = 'ok' AND id IN ({marks})", ids).fetchall())

    def vector_of(self, image_id: int) -> np.ndarray:
        """The stored descriptor of an image (DeepretError for an unknown id)."""
        with self.lock:
            v = self.catalogue.vector(image_id, self.meta["dim"])
        if v is None:
            raise DeepretError(f"image id {image_id} is not in index {self.catalogue.dir}")
        return v

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), descriptors (N, D)) of every indexed image, in storage order (for re-ranking)."""
        with self.lock, self.catalogue.read():
            ids, x, _ = self.catalogue.vectors(self.meta["dim"])
        return ids, x

    def path_of(self, image_id: int) -> Path:
        with self.lock, self.catalogue.guard():
            path = self.catalogue.path_of(image_id)
        if path is None:
            raise DeepretError(f"image id {image_id} is not in index {self.catalogue.dir}")
        return self.root / path

    # --- changes
    def add_files(self, paths: list[str | Path]) -> UpdateReport:
        """Index these files (inside root) now: new or changed ones are extracted and searchable at once."""
        return self._change(paths)

    def update(self, progress: bool = False) -> UpdateReport:
        """Rescan root: add new files, re-extract changed ones (size or mtime), remove deleted ones."""
        return self._change(None, progress=progress)

    def _change(self, paths: Sequence[str | Path] | None, progress: bool = False) -> UpdateReport:
        """Bring the index in line with its folder (paths None) or with the given files; one writer at a
        time across processes, the files extracted first and then committed in one transaction."""
        start = time.perf_counter()
        cat = self.catalogue
        with writer_lock(cat.dir), cat.guard():
            net = self.load_model()
            with self.lock:
                cat.upgrade()
                known, next_id, counted = cat.files(), cat.next_file_id(), cat.meta("not_indexed")
            changes = find_changes(self.root, known, next_id, paths, exclude=cat.dir.resolve(), counted=counted)
            if changes:
                changes.extract(ExtractJob(net, self.root, self.run_settings(net), self.device,
                                           self.meta.get("max_pixels"), progress=progress))
                with self.lock:
                    with cat.write() as db:
                        changes.commit(db)
                        fault_point("before-catalogue-commit")
                    fault_point("after-catalogue-commit")
                    self.backend_publish()
        if changes:
            self.refresh()
        changes.report.seconds = time.perf_counter() - start
        return changes.report

    # --- facts
    def info(self) -> dict:
        with self.lock, self.catalogue.guard():
            self.refresh()
            return describe(self.catalogue, self.meta, self.backend)

    def __len__(self) -> int:
        with self.lock, self.catalogue.guard():
            return self.catalogue.count("ok")

    def close(self) -> None:
        with self.lock:
            self.backend.close()
            self.catalogue.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_index(photos: str | Path, index_dir: str | Path, **options: Any) -> Index:
    """Index every photo under `photos` into `index_dir` (resuming an interrupted build of it) and open it.

    `options`: those of deepret.index.build.build_folder (model, settings, factory, backend, uri, train_on,
    device, progress, max_pixels, weights, workers, chunk)."""
    net, device = build_folder(photos, index_dir, **options)
    index = Index.open(Path(index_dir).resolve(), device=device)
    index.use_model(net)
    return index
