"""Building and updating an index: walk the photos, extract in committed chunks, publish vectors.

A build first lists every photo as a 'pending' catalogue row (ids in sorted path order), then
extracts the pending ones chunk by chunk, committing each chunk (descriptors, sizes, skipped files
with their reasons) in one transaction: a build stopped at any moment resumes with the rows still
pending. Under torchrun each rank extracts its share of the pending rows (rank::world) into the same
catalogue and rank 0 writes the vector index at the end, so the result equals one process's.
An update extracts the changed files first and commits all its changes in one transaction.
"""
from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from deepret.errors import DeepretError
from deepret.runtime import distributed, setup_device
from deepret.extract import ExtractSettings, extract, resolve_settings
from deepret.imageio import DEFAULT_MAX_PIXELS, PHOTO_SUFFIXES, ImageError, image_size
from deepret.index.backends import open_backend
from deepret.index.catalogue import CATALOGUE, FORMAT, Catalogue
from deepret.models import DEFAULT_MODEL, RetrievalNet, get_model, model_fingerprint
from deepret.precision import interchangeable
from deepret.vectors import VectorIndex, fitting_factories, min_train_vectors

if TYPE_CHECKING:
    from deepret.index.index import Index

CHUNK = 256  # files extracted per committed transaction


@dataclass
class UpdateReport:
    """What an update or add_files changed."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


UNREADABLE = (-1, -1)  # (size, mtime_ns) of a listed photo that cannot be stat'ed (a dangling link...)


def scan(root: str | Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """{path relative to root ('/' separators): (size, mtime_ns)} of every photo under root.

    A name that cannot be stat'ed (a dangling symbolic link, no permission) is listed as UNREADABLE: it
    gets a catalogue row and is skipped with its reason at extraction (and retried once it changes). A
    file removed during the walk is left out, as if the walk had come a moment later."""
    root = Path(root)
    if not root.is_dir():
        raise DeepretError(f"photo folder {root} not found: give a folder of photos")
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and
                         (exclude is None or Path(folder, d).resolve() != exclude))
        for name in names:
            if name.lower().endswith(PHOTO_SUFFIXES) and not name.startswith("."):
                path = Path(folder, name)
                try:
                    st = path.stat()
                    found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    if os.path.islink(path):
                        found[path.relative_to(root).as_posix()] = UNREADABLE
                except OSError:
                    found[path.relative_to(root).as_posix()] = UNREADABLE
    return dict(sorted(found.items()))


def unreadable_reason(path: Path, reason: str) -> str:
    """A clearer reason than the decoder's for a file that cannot be opened at all."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return "not found (removed during the build)"
    except PermissionError:
        return "cannot be read: permission denied"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a broken symbolic link (to {os.readlink(path)})"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        return "cannot be read: permission denied"
    except IsADirectoryError:
        return "is a directory, not a photo"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return reason


# the temporary names deepret.fileio.atomic_path gives the vector files of an index while they are written
_TEMP_FILE = re.compile(r"\.(vectors-\d+\.faiss|trained\.faiss)\.[A-Za-z0-9_]+\.tmp")


def remove_stale_temp_files(index_dir: Path) -> list[Path]:
    """Delete temporary vector files left by a writer that was killed while saving (call with the
    writer lock held: no other process writes them then)."""
    removed = []
    for path in index_dir.glob(".*.tmp"):
        if _TEMP_FILE.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """One writer (build or update) per index at a time, across processes; on taking it, the temporary
    files of a killed writer are removed."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / "writer.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeepretError(f"index {index_dir} is being built or updated by another process: wait for it "
                               "to finish") from None
        try:
            remove_stale_temp_files(index_dir)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def extract_files(net: RetrievalNet, root: Path, rows: Sequence[tuple[int, str]], settings: ExtractSettings,
                  device, max_pixels: int | None, workers: int | None, bar=None):
    """Extract `rows` (id, path): ({id: (w, h)} and vectors of the usable ones, {id: reason})."""
    paths = [root / p for _, p in rows]
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


def _record(db, sizes: dict[int, tuple[int, int]], vectors: np.ndarray, skipped: dict[int, str],
            part: bool = False) -> None:
    """Store a chunk's outcome: in the catalogue's file rows, or as new rows of a rank's part file."""
    if part:
        db.executemany("INSERT OR REPLACE INTO files (id, status, width, height, reason) VALUES (?, ?, ?, ?, ?)",
                       [(i, "ok", w, h, None) for i, (w, h) in sizes.items()] +
                       [(i, "skipped", None, None, r) for i, r in skipped.items()])
    else:
        db.executemany("UPDATE files SET status = 'ok', width = ?, height = ?, reason = NULL WHERE id = ?",
                       [(w, h, i) for i, (w, h) in sizes.items()])
        db.executemany("UPDATE files SET status = 'skipped', reason = ? WHERE id = ?",
                       [(r, i) for i, r in skipped.items()])
    Catalogue.store(db, list(sizes), vectors)


def _identity(net: RetrievalNet, model: str, weights: str, settings: ExtractSettings, factory: str,
              backend: str, uri: str | None, root: Path, max_pixels: int | None) -> dict:
    spec = str(Path(model).resolve()) if Path(model).is_file() else model
    if uri and "://" not in uri:
        uri = str(Path(uri).resolve())  # a Milvus Lite file
    return {"format": FORMAT, "root": str(root), "model": spec, "weights": weights, "model_name": net.meta["name"],
            "fingerprint": model_fingerprint(net), "settings": settings.to_dict(), "dim": int(net.dim),
            "factory": factory, "backend": backend, "uri": uri, "max_pixels": max_pixels}


def stored_settings(stored: dict) -> ExtractSettings:
    """The settings an index was built with (see ExtractSettings.from_dict)."""
    return ExtractSettings.from_dict(stored)


def _check_same(meta: dict, want: dict, index_dir: Path, backbone: str | None) -> None:
    """Refuse to resume another build in this folder (the factory may change until the build is done).
    The precision may differ where both are interchangeable (a build begun in bf16 on one machine
    resumes in fp32 on another)."""
    keys = ("root", "fingerprint", "settings", "backend", "uri") + (("factory",) if meta.get("state") == "ready" else ())
    for key in keys:
        have, wanted = meta.get(key), want[key]
        if key == "settings" and isinstance(have, dict):
            have = stored_settings(have).to_dict()  # with fields added since
            if interchangeable(have["precision"], wanted["precision"], backbone):
                have, wanted = {**have, "precision": None}, {**wanted, "precision": None}
        if have != wanted:
            raise DeepretError(f"index {index_dir} was built with {key} {meta.get(key)!r}, not {want[key]!r}: "
                               f"give another --index folder, or update it with `deepret index update --index "
                               f"{index_dir}`")


def build_index(photos: str | Path, index_dir: str | Path, model: str = DEFAULT_MODEL,
                settings: ExtractSettings | None = None, factory: str = "Flat", backend: str = "faiss",
                uri: str | None = None, train_on: str | Path | None = None, device: str | None = None,
                progress: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS, weights: str = "imagenet",
                workers: int | None = None, chunk: int = CHUNK) -> "Index":
    """Index every photo under `photos` into `index_dir`; resumes an interrupted build of it.

    Each `chunk` files are committed together: a stopped build loses at most one chunk's work."""
    from deepret.index.index import Index

    root, index_dir = Path(photos).resolve(), Path(index_dir).resolve()
    if backend not in ("faiss", "milvus"):
        raise DeepretError(f"--backend {backend!r}: use faiss or milvus")
    if backend == "milvus" and not uri:
        raise DeepretError("--backend milvus needs --uri (./photos.db for Milvus Lite, or http://HOST:19530)")
    if backend == "milvus" and factory != "Flat":
        raise DeepretError(f"--factory {factory}: the Milvus backend searches exactly (FLAT); FAISS factories "
                           "apply to --backend faiss")
    rank, world, _ = distributed()
    device = setup_device(device) if world > 1 else device
    net = get_model(model, weights=weights)
    settings = resolve_settings(net, settings, device)
    want = _identity(net, model, weights, settings, factory, backend, uri, root, max_pixels)
    files = scan(root, exclude=index_dir)
    _check_trainable(factory, len(files), train_on, net.dim)
    with ExitStack() as stack:
        if rank == 0:
            stack.enter_context(writer_lock(index_dir))
            _prepare(index_dir, want, files, net.meta.get("backbone"))
        _barrier(world)
        _extract_pending(index_dir, net, root, settings, device, max_pixels, workers, progress, rank, world, chunk,
                         lambda cat: _training_vectors(net, train_on, settings, device, max_pixels, workers,
                                                       progress, factory))
    index = Index.open(index_dir, device=device)
    index.use_model(net)
    return index


def _check_trainable(factory: str, n_files: int, train_on, dim: int) -> None:
    """Before extracting anything: a factory that needs more training vectors than there are photos."""
    VectorIndex(factory, dim)  # a clear error for an invalid factory string
    need = min_train_vectors(factory, dim)
    if train_on is None and n_files < need:
        raise DeepretError(f"factory {factory!r} needs at least {need} training vectors but the collection has "
                           f"{n_files} photos: use one of {', '.join(fitting_factories(n_files, dim))}, or train on "
                           "a larger collection (--train-on DIR)")


def _extract_pending(index_dir, net, root, settings, device, max_pixels, workers, progress, rank, world, chunk,
                     training) -> None:
    """This rank's share of the pending files, chunk by chunk; rank 0 then publishes the vectors."""
    cat = Catalogue(index_dir)
    try:
        pending = cat.db.execute("SELECT id, path FROM files WHERE status = 'pending' ORDER BY id").fetchall()
        mine = pending[rank::world]
        out = cat if world == 1 else _Part(index_dir, rank)  # ranks write their own part file
        with tqdm(total=len(mine), desc=f"index {root.name}", unit="img", disable=not progress or rank != 0) as bar:
            for start in range(0, len(mine), chunk):
                sizes, vectors, skipped = extract_files(net, root, mine[start:start + chunk], settings, device,
                                                        max_pixels, workers, bar)
                with out.write() as db:
                    _record(db, sizes, vectors, skipped, part=out is not cat)
        if out is not cat:
            out.close()
        _barrier(world)
        if rank == 0:
            merge_parts(cat)
        # also when nothing is pending but the build is not marked ready: one killed between writing the
        # vectors and marking itself ready publishes again (the same vectors) and finishes
        if rank == 0 and (cat.meta("base") is None or pending or cat.meta("state") != "ready"):
            trained = (index_dir / "trained.faiss").is_file()  # kept from an earlier try: no --train-on again
            open_backend(cat).publish(cat, train=None if trained else training(cat), force=True)
            with cat.write() as db:
                Catalogue.set_meta(db, state="ready")
                Catalogue.bump(db)
        _barrier(world)
    finally:
        cat.close()


PARTS = "parts"


class _Part(Catalogue):
    """One rank's share of a distributed build: a small SQLite file of its own (rollback journal, so it
    may live on a network file system), merged into the catalogue by rank 0."""

    def __init__(self, index_dir: Path, rank: int) -> None:
        import sqlite3

        path = index_dir / PARTS / f"rank-{rank}.sqlite"
        path.parent.mkdir(exist_ok=True)
        self.dir = index_dir
        self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=DELETE")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, status TEXT, width INTEGER, height INTEGER,
                                              reason TEXT);
            CREATE TABLE IF NOT EXISTS vectors (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER UNIQUE NOT NULL,
                                                vec BLOB NOT NULL);""")


def merge_parts(cat: Catalogue) -> None:
    """Move every rank's part (also those of an interrupted distributed build) into the catalogue."""
    for part in sorted((cat.dir / PARTS).glob("rank-*.sqlite")):
        cat.db.execute("ATTACH DATABASE ? AS part", (str(part),))
        try:
            with cat.write() as db:  # idempotent: a merge killed before the unlink is simply redone
                db.execute("UPDATE files SET status = p.status, width = p.width, height = p.height, reason = p.reason "
                           "FROM part.files AS p WHERE files.id = p.id")
                db.execute("INSERT OR REPLACE INTO vectors (id, vec) SELECT id, vec FROM part.vectors ORDER BY id")
        finally:
            cat.db.execute("DETACH DATABASE part")
        part.unlink()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _prepare(index_dir: Path, want: dict, files: dict[str, tuple[int, int]], backbone: str | None) -> None:
    """Create the catalogue (or check it is this build's) and list the photos not yet in it."""
    fresh = not (index_dir / CATALOGUE).is_file()
    cat = Catalogue(index_dir, create=True)
    try:
        if not fresh:
            _check_same(cat.all_meta(), want, index_dir, backbone)
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
            db.executemany("INSERT OR IGNORE INTO files (path, size, mtime_ns) VALUES (?, ?, ?)",
                           [(p, s, m) for p, (s, m) in files.items()])
    finally:
        cat.close()


def _training_vectors(net, train_on, settings, device, max_pixels, workers, progress, factory):
    """Descriptors of --train-on photos (None: train on the collection itself)."""
    if train_on is None:
        return None
    if VectorIndex(factory, net.dim).is_trained:
        return None
    root = Path(train_on).resolve()
    paths = [root / p for p in scan(root)]
    return extract(net, paths, settings=settings, device=device, workers=workers, progress=progress,
                   on_error="skip", upright=True, max_pixels=max_pixels, desc="train-on").described()


def update_index(index: "Index", paths: Sequence[str | Path] | None = None, progress: bool = False) -> UpdateReport:
    """Bring the index in line with its folder (paths None) or with the given files; one transaction."""
    start = time.perf_counter()
    cat, root = index.catalogue, index.root
    with writer_lock(cat.dir):
        net = index.load_model()
        with index.lock:
            known = cat.files()
        if paths is None:
            current = scan(root, exclude=cat.dir.resolve())
            gone = [known[p][0] for p in known if p not in current]
        else:
            current, gone = {}, []
            for p in paths:
                rel = _relative(root, Path(p))
                try:
                    st = (root / rel).stat()
                    current[rel] = (st.st_size, st.st_mtime_ns)
                except OSError:  # gone or unreadable since the check: skipped with its reason
                    current[rel] = UNREADABLE
        todo = {p: sm for p, sm in current.items()
                if p not in known or known[p][1:3] != sm or known[p][3] == "pending"}
        changed = [known[p][0] for p in todo if p in known]
        report = UpdateReport(added=len(todo) - len(changed), changed=len(changed), removed=len(gone))
        if not todo and not gone:
            report.seconds = time.perf_counter() - start
            return report
        with index.lock:
            next_id = int(cat.db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'files'")
                          .fetchone()[0]) + 1
        rows = [(next_id + j, p) for j, p in enumerate(todo)]
        sizes, vectors, skipped = {}, [np.zeros((0, index.meta["dim"]), np.float32)], {}
        with tqdm(total=len(rows), desc="update", unit="img", disable=not progress) as bar:
            for s in range(0, len(rows), CHUNK):
                sz, v, sk = extract_files(net, root, rows[s:s + CHUNK], index.run_settings(net), index.device,
                                          index.meta.get("max_pixels"), None, bar)
                sizes.update(sz), vectors.append(v), skipped.update(sk)
        with index.lock:
            with cat.write() as db:
                Catalogue.remove(db, gone + changed)
                db.executemany("INSERT INTO files (id, path, size, mtime_ns) VALUES (?, ?, ?, ?)",
                               [(i, p, *todo[p]) for i, p in rows])
                _record(db, sizes, np.concatenate(vectors), skipped)
                Catalogue.bump(db)
            index.backend_publish()
        paths_by_id = dict(rows)
        report.skipped = [{"path": paths_by_id[i], "reason": r} for i, r in sorted(skipped.items())]
    index.refresh()
    report.seconds = time.perf_counter() - start
    return report


def _relative(root: Path, path: Path) -> str:
    path = (root / path) if not path.is_absolute() else path
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        raise DeepretError(f"{path} is not inside the indexed folder {root}: copy it there first") from None
    if not path.is_file():
        raise DeepretError(f"{path} not found: give a photo inside {root}")
    if not path.name.lower().endswith(PHOTO_SUFFIXES):
        raise DeepretError(f"{path} is not a photo ({', '.join(PHOTO_SUFFIXES)})")
    return rel.as_posix()
