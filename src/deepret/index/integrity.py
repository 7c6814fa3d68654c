"""`deepret index verify` and `deepret index repair`: find damage anywhere in an index folder, and
rebuild what is damaged from what is intact.

verify: the catalogue (PRAGMA integrity_check, every descriptor against its checksum, files and
descriptors agreeing), the vector file and trained.faiss (size and full sha256 against their
records, readable by FAISS), a torchrun build's parts, the re-ranking and thumbnail caches. One line
per problem, each naming the file and the command that mends it.

repair: a damaged catalogue is salvaged row by row into a new one (the damaged file is kept as
catalogue.damaged.sqlite); damaged descriptors are dropped and their photos re-extracted (with the
index's stored model and settings, as `index update` does), also the photos whose rows were lost;
the vector file is written again from the stored descriptors; damaged caches and parts are deleted
(they are made again). Whatever repair is killed at, running it again finishes it.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepret.errors import DeepretError
from deepret.fileio import fsync_dir
from deepret.index.catalogue import CATALOGUE, Catalogue, is_damage
from deepret.index.checks import file_problem, repair_hint, restamp, vector_crc
from deepret.index.lock import writer_lock
from deepret.index.parts import PARTS
from deepret.index.photos import scan

REQUIRED_META = ("root", "model", "fingerprint", "settings", "dim", "factory", "backend")
DAMAGED_COPY = "catalogue.damaged.sqlite"
_SALVAGE = "catalogue.salvage.sqlite"
_BLOCK = 512  # rows read per query while salvaging


@dataclass
class RepairReport:
    """What `repair` did, one line per step ([] : nothing was damaged)."""

    done: list[str] = field(default_factory=list)
    reextracted: int = 0


# --- verify
def verify(index_dir: str | Path) -> list[str]:
    """Every problem found in the index at `index_dir`, one line each with its remedy ([]: intact)."""
    index_dir = Path(index_dir).resolve()
    fix = repair_hint(index_dir)
    try:
        cat = Catalogue(index_dir)
    except DeepretError as exc:
        return [str(exc)]
    problems: list[str] = []
    try:
        damage = _catalogue_damage(cat)
        if damage:
            return [f"the catalogue {cat.path} is damaged ({damage}): {fix}"] + _cache_problems(index_dir)
        meta = cat.all_meta()
        if meta.get("state") != "ready":
            return [f"the build of index {index_dir} has not finished: run the same `deepret index build` again"]
        bad, ok_ids, vec_ids = _descriptor_check(cat, int(meta["dim"]))
        if bad:
            problems.append(f"{len(bad)} stored descriptors in {cat.path} differ from their checksums (image ids "
                            f"{_some(bad)}): {fix} (it re-extracts those photos)")
        if ok_ids - vec_ids:
            problems.append(f"{len(ok_ids - vec_ids)} photos of {cat.path} have no descriptor (ids "
                            f"{_some(ok_ids - vec_ids)}): {fix}")
        if meta.get("backend", "faiss") == "faiss":
            problems += _vector_file_problems(index_dir, meta, fix)
    except DeepretError as exc:
        problems.append(str(exc))
    finally:
        cat.close()
    return problems + _cache_problems(index_dir)


def _catalogue_damage(cat: Catalogue) -> str | None:
    """SQLite's full check and the meta values, or None."""
    try:
        rows = [r[0] for r in cat.db.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            return _one_line(rows)
        raw = dict(cat.db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        return str(exc)
    for key in REQUIRED_META + tuple(raw):
        try:
            json.loads(raw[key])
        except (KeyError, TypeError, ValueError):
            return f"its setting {key!r} cannot be read"
    return None


def _descriptor_check(cat: Catalogue, dim: int) -> tuple[list[int], set[int], set[int]]:
    """(ids of damaged descriptors, ids of indexed photos, ids with an intact descriptor)."""
    bad: list[int] = []
    ids, _, _ = cat.vectors(dim, on_damage=bad.append)
    ok_ids = {r[0] for r in cat.db.execute("SELECT id FROM files WHERE status = 'ok'")}
    return bad, ok_ids, {int(i) for i in ids}


def _vector_file_problems(index_dir: Path, meta: dict, fix: str) -> list[str]:
    from deepret.vectors import VectorIndex

    problems = []
    base = meta.get("base")
    if base is None:
        return [f"index {index_dir} has no vector file: {fix}"]
    path = index_dir / base["file"]
    problem = file_problem(path, base if "sha256" in base else None, full=True)
    if problem is None:
        try:
            vi = VectorIndex.load(path, meta["factory"])
            if vi.ntotal != base["count"]:
                problem = f"is damaged (it holds {vi.ntotal} vectors, {base['count']} written)"
        except DeepretError:
            problem = "is damaged (FAISS cannot read it)"
    if problem:
        problems.append(f"{path} {problem}: {fix} (it rebuilds it from the descriptors in the catalogue)")
    trained = meta.get("trained")
    if trained is not None and (index_dir / "trained.faiss").exists():
        problem = file_problem(index_dir / "trained.faiss", trained, full=True)
        if problem:
            problems.append(f"{index_dir / 'trained.faiss'} {problem}: {fix} (it trains the quantizers again on "
                            "the stored descriptors)")
    return problems


def _cache_problems(index_dir: Path) -> list[str]:
    """Damaged parts of a torchrun build, re-ranking states and thumbnails."""
    fix = repair_hint(index_dir)
    problems = [f"{p} (a torchrun build's part) is damaged: {fix} (it deletes it; the next build re-extracts "
                "its photos)" for p in _damaged_parts(index_dir)]
    problems += [f"{p} (a cache) is damaged: {fix} (it deletes it; it is made again when needed)"
                 for p in _damaged_caches(index_dir)]
    return problems


def _damaged_parts(index_dir: Path) -> list[Path]:
    damaged = []
    for part in sorted((index_dir / PARTS).glob("rank-*.sqlite")):
        try:
            db = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
            try:
                if [r[0] for r in db.execute("PRAGMA integrity_check")] != ["ok"]:
                    damaged.append(part)
            finally:
                db.close()
        except sqlite3.DatabaseError:
            damaged.append(part)
    return damaged


def _damaged_caches(index_dir: Path) -> list[Path]:
    from PIL import Image

    damaged = []
    for path in sorted((index_dir / "rerank").glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
        except Exception:  # any failure to read a cache file is damage (zip, zlib, numpy format)
            damaged.append(path)
    for path in sorted((index_dir / "thumbs").rglob("*.jpg")):
        try:
            with Image.open(path) as im:
                im.load()
        except Exception:  # PIL raises many types on a broken JPEG
            damaged.append(path)
    return damaged


def _one_line(rows: list[str]) -> str:
    """SQLite's integrity_check report (rows of lines) as one short line."""
    lines = [ln.strip() for r in rows for ln in r.splitlines() if ln.strip() and not ln.startswith("***")]
    return (lines[0] if lines else "integrity check failed") + (f"; {len(lines) - 1} more" if len(lines) > 1 else "")


def _some(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")


# --- repair
def repair(index_dir: str | Path, device: str | None = None) -> RepairReport:
    """Mend the index at `index_dir` (see the module's docstring); afterwards `verify` finds nothing."""
    index_dir = Path(index_dir).resolve()
    report = RepairReport()
    if not (index_dir / CATALOGUE).is_file():
        raise DeepretError(f"{index_dir} is not a deepret index (no {CATALOGUE}): build one with "
                           f"`deepret index build PHOTOS --index {index_dir}`")
    with writer_lock(index_dir):
        salvaged = _repair_catalogue(index_dir, report)
        cat = Catalogue(index_dir)
        try:
            cat.upgrade()
            meta = cat.all_meta()
            if meta.get("state") != "ready":
                raise DeepretError(f"the build of index {index_dir} has not finished: run the same `deepret index "
                                   "build` again (it resumes)")
            _drop_damaged_descriptors(cat, int(meta["dim"]), report)
            _repair_vectors(cat, meta, salvaged, report)
            lost = _lost_photos(cat, Path(meta["root"]), salvaged)
        finally:
            cat.close()
        for path in _damaged_parts(index_dir) + _damaged_caches(index_dir):
            path.unlink(missing_ok=True)
            report.done.append(f"deleted the damaged {path}")
    if lost:
        from deepret.index.index import Index

        with Index.open(index_dir, device=device) as index:
            added = index.add_files([Path(meta["root"]) / p for p in lost])
        report.reextracted = added.added + added.changed
        report.done.append(f"re-extracted {report.reextracted} photos whose descriptors were lost")
    left = verify(index_dir)
    if left:
        raise DeepretError(f"repair of {index_dir} left a problem: {left[0]}")
    return report


def _repair_catalogue(index_dir: Path, report: RepairReport) -> bool:
    """Salvage a damaged catalogue into a new one; whether it was damaged."""
    path, fresh = index_dir / CATALOGUE, index_dir / _SALVAGE
    try:
        cat = Catalogue(index_dir)
    except DeepretError:
        cat = None
    try:
        damage = _catalogue_damage(cat) if cat is not None else "it cannot be opened"
        if damage is None:
            return False
        rows = _salvage(path)
    finally:
        if cat is not None:
            cat.close()
    for suffix in ("", "-journal"):  # what a killed repair left (its journal must not meet a new file)
        (index_dir / (_SALVAGE + suffix)).unlink(missing_ok=True)
    out = Catalogue(index_dir, create=True, name=_SALVAGE, wal=False)
    try:
        with out.write() as db:
            kept = _write_salvaged(db, rows, index_dir)
    finally:
        out.close()
    for suffix in ("", "-wal"):  # the damaged file, kept for inspection
        old = index_dir / (CATALOGUE + suffix)
        if old.exists():
            shutil.copyfile(old, index_dir / (DAMAGED_COPY + suffix))
    for suffix in ("-wal", "-shm"):
        (index_dir / (CATALOGUE + suffix)).unlink(missing_ok=True)
    fresh.replace(path)
    fsync_dir(index_dir)
    report.done.append(f"salvaged the damaged catalogue ({damage}): kept {kept}; the damaged file is "
                       f"{index_dir / DAMAGED_COPY}")
    return True


def _salvage(path: Path) -> dict[str, list[tuple]]:
    """Every row that can still be read from each table of a damaged catalogue."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise DeepretError(f"nothing can be read from the catalogue {path} ({exc}): build the index again "
                           f"into a new folder (`deepret index build PHOTOS --index NEW`)") from None
    try:
        return {"meta": _readable(db, "meta", "rowid", "key, value"),
                "files": _readable(db, "files", "id", "path, size, mtime_ns, width, height, status, reason"),
                "vectors": _readable(db, "vectors", "seq", "id, vec, crc"),
                "sequence": _readable(db, "sqlite_sequence", "rowid", "name, seq")}
    finally:
        db.close()


def _readable(db: sqlite3.Connection, table: str, key: str, columns: str) -> list[tuple]:
    """(key, columns...) of the rows of `table` that can be read: ranges of rows while they read, one by
    one around a damaged page."""
    def run(sql, args):
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc) and "no such" in str(exc):
                return []
            return None

    upper = run(f"SELECT MAX({key}) FROM {table}", ())
    upper = upper[0][0] if upper and upper[0][0] is not None else None
    rows: list[tuple] = []
    pos, failures = 0, 0
    while upper is None or pos < upper:
        chunk = run(f"SELECT {key}, {columns} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT {_BLOCK}", (pos,))
        if chunk is not None:
            if not chunk:
                break
            rows += chunk
            pos, failures = chunk[-1][0], 0
            continue
        failures += 1
        if upper is None and failures > 64:
            break
        for r in range(pos + 1, pos + _BLOCK + 1):  # step over the damaged part row by row
            one = run(f"SELECT {key}, {columns} FROM {table} WHERE {key} = ?", (r,))
            rows += one or []
        pos += _BLOCK
    return rows


def _write_salvaged(db: sqlite3.Connection, rows: dict[str, list[tuple]], index_dir: Path) -> str:
    """The readable, well-formed rows into the new catalogue; what was kept, in words."""
    meta = {}
    for _, k, v in rows["meta"]:
        try:
            meta[k] = json.loads(v)
        except (TypeError, ValueError):
            continue
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        root = f" {meta['root']}" if "root" in meta else " PHOTOS"
        raise DeepretError(f"the damaged catalogue of {index_dir} lost its {', '.join(missing)}: build the index "
                           f"again into a new folder (`deepret index build{root} --index NEW`)")
    dim = int(meta["dim"])
    meta.pop("milvus_seq", None)  # Milvus is sent every descriptor again (the vector file is written again too)
    meta.setdefault("state", "ready")
    Catalogue.set_meta(db, **meta)
    files = [r for r in rows["files"] if isinstance(r[1], str) and r[6] in ("ok", "skipped", "pending")]
    db.executemany("INSERT OR IGNORE INTO files (id, path, size, mtime_ns, width, height, status, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", files)
    ok = {r[0] for r in files if r[6] == "ok"}
    vectors = [r for r in rows["vectors"] if r[1] in ok and isinstance(r[2], bytes) and len(r[2]) == 4 * dim
               and (r[3] is None or vector_crc(r[2]) == r[3])]
    db.executemany("INSERT OR IGNORE INTO vectors (seq, id, vec, crc) VALUES (?, ?, ?, ?)",
                   [(s, i, v, vector_crc(v)) for s, i, v, _ in vectors])
    described = {r[1] for r in vectors}
    db.executemany("UPDATE files SET status = 'pending' WHERE id = ?", [(i,) for i in ok - described])
    for _, name, seq in rows["sequence"]:  # ids are never reused, also those of lost rows
        if name in ("files", "vectors") and isinstance(seq, int):
            db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT ?, 0 WHERE NOT EXISTS "
                       "(SELECT 1 FROM sqlite_sequence WHERE name = ?)", (name, name))
            db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (seq, name))
    Catalogue.bump(db)
    return (f"{len(files)} of the file rows, {len(vectors)} descriptors intact, "
            f"{len(ok - described)} photos to re-extract")


def _drop_damaged_descriptors(cat: Catalogue, dim: int, report: RepairReport) -> None:
    """Descriptors that differ from their checksum (or are missing) are dropped, their photos marked to
    re-extract."""
    bad, ok_ids, vec_ids = _descriptor_check(cat, dim)
    lost = sorted(set(bad) | (ok_ids - vec_ids))
    if not lost:
        return
    with cat.write() as db:
        db.executemany("DELETE FROM vectors WHERE id = ?", [(i,) for i in bad])
        db.executemany("UPDATE files SET status = 'pending' WHERE id = ?", [(i,) for i in lost])
        Catalogue.bump(db)
    report.done.append(f"dropped {len(lost)} damaged or missing descriptors (image ids {_some(lost)})")


def _repair_vectors(cat: Catalogue, meta: dict, salvaged: bool, report: RepairReport) -> None:
    """Write the vector file again if it is damaged or the catalogue changed; restamp intact files."""
    from deepret.index.backends import open_backend

    if meta.get("backend", "faiss") != "faiss":
        if salvaged:
            open_backend(cat).publish(cat, force=True)
            report.done.append("sent every descriptor to Milvus again")
        return
    index_dir = cat.dir
    trained = meta.get("trained")
    if trained is not None and (index_dir / "trained.faiss").exists():
        if file_problem(index_dir / "trained.faiss", trained, full=True):
            (index_dir / "trained.faiss").unlink()
            with cat.write() as db:
                db.execute("DELETE FROM meta WHERE key = 'trained'")
            report.done.append("deleted the damaged trained.faiss (trained again on the stored descriptors)")
            salvaged = True  # the vector file was made with those quantizers: write it again
        elif trained.get("stamp") != restamp(index_dir / "trained.faiss", trained)["stamp"]:
            with cat.write() as db:
                Catalogue.set_meta(db, trained=restamp(index_dir / "trained.faiss", trained))
    base = meta.get("base")
    problems = _vector_file_problems(index_dir, {**meta, "trained": None}, "") if base else ["none"]
    if problems or salvaged or cat.count("pending"):
        open_backend(cat).publish(cat, force=True)
        report.done.append(f"wrote the vector file {cat.meta('base')['file']} from the stored descriptors")
    elif "sha256" in base and base.get("stamp") != restamp(index_dir / base["file"], base)["stamp"]:
        with cat.write() as db:  # checked in full just now: opening need not hash it again
            Catalogue.set_meta(db, base=restamp(index_dir / base["file"], base))
            Catalogue.bump(db)


def _lost_photos(cat: Catalogue, root: Path, salvaged: bool) -> list[str]:
    """Photos to re-extract: rows marked pending, and (after a salvage) photos with no row left."""
    files = cat.files()
    lost = {p for p, (_, _, _, status) in files.items() if status == "pending"}
    try:
        present = scan(root, exclude=cat.dir.resolve())
    except DeepretError:
        return []
    if salvaged:
        lost |= set(present) - set(files)
    return sorted(p for p in lost if p in present)
