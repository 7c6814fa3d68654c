"""Building an index: list the photos, extract them in committed chunks, publish the vectors.

A build first lists every photo as a 'pending' catalogue row (ids in sorted path order), then
extracts the pending ones chunk by chunk, committing each chunk (descriptors, sizes, skipped files
with their reasons) in one transaction: a build stopped at any moment resumes with the rows still
pending. Under torchrun each rank extracts its share of the pending rows (rank::world) into a part
file of its own (deepret.index.parts) and rank 0 writes the vector index at the end, so the result
equals one process's. `deepret.index.build_index` builds and opens the index.

The arguments are checked before anything is written (an invalid factory, a --size no photo can be
described at, a missing optional package), and a new index folder whose build fails before its first
chunk is removed again: a failed build leaves no half-made index behind. A build that died before its
identity was committed (an empty catalogue) starts afresh on the next run.
"""
from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from deepret.engines.calibration import write_calibration_sample
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings, extract, resolve_settings
from deepret.fileio import printable
from deepret.imageio import DEFAULT_MAX_PIXELS, ImageError, image_size
from deepret.index.backends import open_backend
from deepret.index.catalogue import CATALOGUE, NAME, Catalogue, name_param
from deepret.index.identity import build_identity, check_same
from deepret.index.limits import check_size
from deepret.index.lock import LOCK, writer_lock
from deepret.index.parts import PARTS, barrier, merge_parts, open_part
from deepret.index.photos import UNREADABLE, by_count, outside_link_reason, scan, unreadable_reason
from deepret.models import DEFAULT_MODEL, RetrievalNet, get_model
from deepret.runtime import distributed, setup_device
from deepret.vectors import VectorIndex, fitting_factories, min_train_vectors

CHUNK = 256  # files extracted per committed transaction
CALIBRATION_LIST = "calibration.txt"  # int8 without --calibration: the collection's photos it was calibrated on

Rows = Sequence[tuple[int, str]]  # (id, path relative to the photo folder) of catalogue file rows
Outcome = tuple[dict[int, tuple[int, int]], np.ndarray, dict[int, str]]  # sizes, vectors, skipped of rows


@dataclass
class ExtractJob:
    """What to extract (this rank's share of the rows), from where, and how: a build's or an update's job."""

    net: RetrievalNet
    root: Path  # the photo folder
    settings: ExtractSettings
    device: str | None = None
    max_pixels: int | None = None
    workers: int | None = None
    progress: bool = False
    chunk: int = CHUNK  # files extracted per committed transaction
    rank: int = 0
    world: int = 1

    def chunks(self, rows: Rows, desc: str) -> Iterator[tuple[Rows, Outcome]]:
        """(rows, their outcome) of this rank's share of `rows`, `chunk` rows at a time, with a progress bar."""
        mine = rows[self.rank::self.world]
        with tqdm(total=len(mine), desc=desc, unit="img", disable=not self.progress or self.rank != 0) as bar:
            for start in range(0, len(mine), self.chunk):
                part = mine[start:start + self.chunk]
                yield part, extract_files(self.net, self.root, part, self.settings, self.device, self.max_pixels,
                                          self.workers, bar)


def extract_files(net: RetrievalNet, root: Path, rows: Sequence[tuple[int, str]], settings: ExtractSettings,
                  device, max_pixels: int | None, workers: int | None, bar=None):
    """Extract `rows` (id, path): ({id: (w, h)} and vectors of the usable ones, {id: reason}). A symbolic
    link out of the collection is skipped unread (deepret.index.photos)."""
    outside = {image_id: reason for image_id, p in rows if (reason := outside_link_reason(root, root / p))}
    if outside:
        sizes, vectors, skipped = extract_files(net, root, [r for r in rows if r[0] not in outside], settings,
                                                device, max_pixels, workers, None)
        if bar is not None:
            bar.update(len(rows))
        return sizes, vectors, {**skipped, **outside}
    paths = [root / p for _, p in rows]
    if not paths:
        return {}, np.zeros((0, net.dim), np.float32), {}
    found = extract(net, paths, settings=settings, device=device, workers=workers, progress=False,
                    on_error="skip", upright=True, max_pixels=max_pixels)
    vectors, failures = found.vectors, found.failed
    sizes, skipped = {}, {rows[i][0]: unreadable_reason(paths[i], reason) for i, reason in failures.items()}
    for i, (image_id, _) in enumerate(rows):
        if image_id not in skipped:
            try:
                sizes[image_id] = image_size(paths[i], upright=True, max_pixels=max_pixels)
            except ImageError as exc:  # changed under our feet
                skipped[image_id] = unreadable_reason(paths[i], exc.reason)
    keep = [i for i, (image_id, _) in enumerate(rows) if image_id in sizes]
    if bar is not None:
        bar.update(len(rows))
    return sizes, vectors[keep], skipped


def record(db, rows: Rows, sizes: dict[int, tuple[int, int]], vectors: np.ndarray, skipped: dict[int, str]) -> None:
    """Store a chunk's outcome in its file rows (listed first where missing: a rank's part file) and its vectors."""
    db.executemany(f"INSERT OR IGNORE INTO files (id, path) VALUES (?, {NAME})", [(i, name_param(p)) for i, p in rows])
    db.executemany("UPDATE files SET status = 'ok', width = ?, height = ?, reason = NULL WHERE id = ?",
                   [(w, h, i) for i, (w, h) in sizes.items()])
    db.executemany("UPDATE files SET status = 'skipped', reason = ? WHERE id = ?",
                   [(printable(r, backslash=False), i) for i, r in skipped.items()])  # one line of UTF-8
    Catalogue.store(db, list(sizes), vectors)


def build_folder(photos: str | Path, index_dir: str | Path, model: str = DEFAULT_MODEL,
                 settings: ExtractSettings | None = None, factory: str = "Flat", backend: str = "faiss",
                 uri: str | None = None, train_on: str | Path | None = None, device: str | None = None,
                 progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS, weights: str = "imagenet",
                 workers: int | None = None, chunk: int = CHUNK) -> tuple[RetrievalNet, str | None]:
    """Index every photo under `photos` into the folder `index_dir`; resumes an interrupted build of it.
    Returns the loaded network and the device, to open the index with (deepret.index.build_index).

    Each `chunk` files are committed together: a stopped build loses at most one chunk's work."""
    root, index_dir = Path(photos).resolve(), Path(index_dir).resolve()
    if index_dir.exists() and not index_dir.is_dir():
        raise DeepretError(f"--index {printable(index_dir)} is a file, not a folder: give a folder for the index")
    if backend not in ("faiss", "milvus"):
        raise DeepretError(f"--backend {backend!r}: use faiss or milvus")
    if backend == "milvus" and not uri:
        raise DeepretError("--backend milvus needs --uri (./photos.db for Milvus Lite, or http://HOST:19530)")
    if backend == "milvus" and factory != "Flat":
        raise DeepretError(f"--factory {factory}: the Milvus backend searches exactly (FLAT); FAISS factories "
                           "apply to --backend faiss")
    if backend == "milvus":
        from deepret.index.milvus import check_installed

        check_installed(uri)
    rank, world, _ = distributed()
    device = setup_device(device) if world > 1 else device
    net = get_model(model, weights=weights)
    new = rank == 0 and world == 1 and not index_dir.exists()
    not_indexed: dict[str, int] = {}
    files = scan(root, exclude=index_dir, not_indexed=not_indexed)
    if settings is not None and settings.precision == "int8" and not settings.calibration:
        index_dir.mkdir(parents=True, exist_ok=True)  # int8 without photos given: a sample of the collection
        sample = write_calibration_sample(index_dir / CALIBRATION_LIST, root, [p for p, v in files.items() if v != UNREADABLE])
        settings = replace(settings, calibration=str(sample))
    settings = resolve_settings(net, settings, device)
    check_size(net, settings, max_pixels, device)
    want = build_identity(net, model, weights, settings, factory, backend, uri, root, max_pixels)
    _check_trainable(factory, len(files), train_on, net.dim)
    job = ExtractJob(net, root, settings, device=device, max_pixels=max_pixels, workers=workers, progress=progress,
                     chunk=chunk, rank=rank, world=world)
    try:
        with ExitStack() as stack:
            if rank == 0:
                stack.enter_context(writer_lock(index_dir, needed_bytes=3 * len(files) * (4 * net.dim + 64)))
                _prepare(index_dir, want, files, net.meta.get("backbone"), not_indexed)
            barrier(world)
            _extract_pending(index_dir, job, lambda: _training_vectors(job, train_on, factory))
    except BaseException:
        if new:
            _remove_if_unstarted(index_dir)
        raise
    return net, device


def _remove_if_unstarted(index_dir: Path) -> None:
    """After a failed first build into a folder it created: remove the folder when nothing was extracted
    yet (only deepret's own files are in it), so that no half-made index is left behind."""
    ours = {CATALOGUE, CATALOGUE + "-wal", CATALOGUE + "-shm", CATALOGUE + "-journal", LOCK, PARTS}
    try:
        if not index_dir.is_dir() or any(p.name not in ours for p in index_dir.iterdir()):
            return
        if (index_dir / CATALOGUE).is_file():
            cat = Catalogue(index_dir)
            try:
                started = cat.db.execute("SELECT COUNT(*) FROM files WHERE status != 'pending'").fetchone()[0]
            finally:
                cat.close()
            if started:
                return
        shutil.rmtree(index_dir)
    except (OSError, DeepretError, sqlite3.Error):
        pass  # the original error is the one to report


def _check_trainable(factory: str, n_files: int, train_on, dim: int) -> None:
    """Before extracting anything: a factory that needs more training vectors than there are photos."""
    VectorIndex(factory, dim)  # a clear error for an invalid factory string
    need = min_train_vectors(factory, dim)
    if train_on is None and n_files < need:
        raise DeepretError(f"factory {factory!r} needs at least {need} training vectors but the collection has "
                           f"{n_files} photos: use one of {', '.join(fitting_factories(n_files, dim))}, or train on "
                           "a larger collection (--train-on DIR)")


def _extract_pending(index_dir: Path, job: ExtractJob, training: Callable[[], np.ndarray | None]) -> None:
    """This rank's share of the pending files, chunk by chunk; rank 0 then publishes the vectors
    (`training`: the vectors to train the factory on, None: the collection's own)."""
    cat = Catalogue(index_dir)
    try:
        pending = cat.db.execute("SELECT id, path FROM files WHERE status = 'pending' ORDER BY id").fetchall()
        out = cat if job.world == 1 else open_part(index_dir, job.rank)  # ranks write their own part file
        for rows, (sizes, vectors, skipped) in job.chunks(pending, f"index {job.root.name}"):
            with out.write() as db:
                record(db, rows, sizes, vectors, skipped)
        if out is not cat:
            out.close()
        barrier(job.world)
        if job.rank == 0:
            merge_parts(cat)
        # also when nothing is pending but the build is not marked ready: one killed between writing the
        # vectors and marking itself ready publishes again (the same vectors) and finishes
        if job.rank == 0 and (cat.meta("base") is None or pending or cat.meta("state") != "ready"):
            trained = (index_dir / "trained.faiss").is_file()  # kept from an earlier try: no --train-on again
            open_backend(cat).publish(cat, train=None if trained else training(), force=True)
            with cat.write() as db:
                Catalogue.set_meta(db, state="ready")
                Catalogue.bump(db)
        barrier(job.world)
    finally:
        cat.close()


def _prepare(index_dir: Path, want: dict, files: dict[str, tuple[int, int]], backbone: str | None,
             not_indexed: dict[str, int]) -> None:
    """Create the catalogue (or check it is this build's), list the photos not yet in it and store the
    counts of the files not indexed (by suffix)."""
    cat = Catalogue(index_dir, create=True)
    try:
        fresh = cat.meta("fingerprint") is None  # also a build that died before its identity was committed
        if not fresh:
            check_same(cat.all_meta(), want, index_dir, backbone)
            merge_parts(cat)
            if cat.meta("state") != "ready":
                if cat.meta("factory") != want["factory"]:  # quantizers trained for the other factory
                    (index_dir / "trained.faiss").unlink(missing_ok=True)
                with cat.write() as db:
                    Catalogue.set_meta(db, factory=want["factory"])
        if fresh and want["backend"] == "milvus":
            want["collection"] = "deepret_" + want["fingerprint"][:12]
        with cat.write() as db:
            if fresh:
                Catalogue.set_meta(db, **want, state="building", version=0)
            db.executemany(f"INSERT OR IGNORE INTO files (path, size, mtime_ns) VALUES ({NAME}, ?, ?)",
                           [(name_param(p), s, m) for p, (s, m) in files.items()])
            Catalogue.set_meta(db, not_indexed=by_count(not_indexed))
    finally:
        cat.close()


def _training_vectors(job: ExtractJob, train_on: str | Path | None, factory: str) -> np.ndarray | None:
    """Descriptors of --train-on photos (None: train on the collection itself)."""
    net, settings, device, max_pixels, workers, progress = (job.net, job.settings, job.device, job.max_pixels,
                                                            job.workers, job.progress)
    if train_on is None:
        return None
    if VectorIndex(factory, net.dim).is_trained:
        return None
    root = Path(train_on).resolve()
    paths = [root / p for p in scan(root)]
    return extract(net, paths, settings=settings, device=device, workers=workers, progress=progress,
                   on_error="skip", upright=True, max_pixels=max_pixels, desc="train-on").described()
