"""Damaged index files are found (on opening cheaply, by `index verify` fully) and mended by `index
repair`; updates killed at exact moments (DEEPRET_FAULT) leave an index that opens, verifies and searches."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data

import deepret.index.checks as checks
from deepret.cli import main
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import Index, build_index
from deepret.index.backends import FaissBackend
from deepret.index.catalogue import Catalogue
from deepret.index.integrity import verify

DIM = 32
SRC = Path(__file__).resolve().parents[1] / "src"
LITE0 = dict(model="efficientnet_lite0-gem", settings=ExtractSettings(size=128), progress=False)


def _synthetic(path: Path, n: int = 50) -> tuple[Catalogue, np.ndarray]:
    """A catalogue of n random unit vectors and its published vector file."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cat = Catalogue(path, create=True)
    with cat.write() as db:
        db.executemany("INSERT INTO files (id, path, status) VALUES (?, ?, 'ok')", [(i + 1, f"{i}.jpg") for i in range(n)])
        Catalogue.store(db, list(range(1, n + 1)), x)
    FaissBackend(path, "Flat", DIM).publish(cat, force=True)
    return cat, x


def _scribble(path: Path, n: int, seed: int = 0) -> None:
    """n random bytes over the middle of a file (size and name unchanged)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - n // 2)
        f.write(np.random.default_rng(seed).bytes(n))


def test_opening_checks_size_header_and_stamp_without_hashing_an_untouched_file(tmp_path, monkeypatch):
    cat, x = _synthetic(tmp_path, n=400)  # a file of 51 KB: its middle is past the header checked on opening
    base = cat.meta("base")
    assert base["size"] == (tmp_path / base["file"]).stat().st_size and len(base["sha256"]) == 64
    full = []
    real = checks.sha256_file
    monkeypatch.setattr(checks, "sha256_file", lambda p, limit=None: full.append(limit) or real(p, limit))
    reader = FaissBackend(tmp_path, "Flat", DIM)
    reader.refresh(cat)
    assert full == [checks.HEAD]  # the first 4 KB only: opening stays fast
    assert reader.search(x[:3], 1)[1][:, 0].tolist() == [1, 2, 3]
    _scribble(tmp_path / base["file"], 64)  # written to since: its stamp changed, so it is hashed in full
    with pytest.raises(DeepretError, match=r"vectors-1\.faiss is damaged \(its checksum differs.*deepret index "
                                           r"repair --index"):
        FaissBackend(tmp_path, "Flat", DIM).refresh(cat)
    cat.close()


def test_a_deleted_vector_file_names_the_repair_instead_of_try_again(tmp_path):
    cat, _ = _synthetic(tmp_path)
    (tmp_path / "vectors-1.faiss").unlink()
    with pytest.raises(DeepretError, match=r"vectors-1\.faiss of index .* is missing: run `deepret index repair"):
        FaissBackend(tmp_path, "Flat", DIM).refresh(cat)
    FaissBackend(tmp_path, "Flat", DIM).publish(cat, force=True)  # what repair does: from the descriptors
    reader = FaissBackend(tmp_path, "Flat", DIM)
    reader.refresh(cat)
    assert reader.vi.ntotal == 50 and cat.meta("base")["file"] == "vectors-2.faiss"
    cat.close()


def test_a_truncated_vector_file_says_so_with_the_repair(tmp_path):
    cat, _ = _synthetic(tmp_path)
    size = (tmp_path / "vectors-1.faiss").stat().st_size
    os.truncate(tmp_path / "vectors-1.faiss", 918)
    with pytest.raises(DeepretError, match=rf"vectors-1\.faiss is damaged \(918 bytes, {size} written\): run "
                                           r"`deepret index repair"):
        FaissBackend(tmp_path, "Flat", DIM).refresh(cat)
    cat.close()


def test_a_damaged_descriptor_is_never_used(tmp_path):
    cat, x = _synthetic(tmp_path)
    with cat.write() as db:  # one byte of descriptor 7 changes, its checksum does not
        blob = bytearray(db.execute("SELECT vec FROM vectors WHERE id = 7").fetchone()[0])
        blob[100] ^= 0xFF
        db.execute("UPDATE vectors SET vec = ? WHERE id = 7", (bytes(blob),))
    with pytest.raises(DeepretError, match=r"catalogue .*catalogue\.sqlite is damaged \(the stored descriptor of "
                                           r"image id 7.*deepret index repair"):
        cat.vectors(DIM)
    with pytest.raises(DeepretError, match="image id 7"):
        cat.vector(7, DIM)
    bad = []
    ids, got, _ = cat.vectors(DIM, on_damage=bad.append)
    assert bad == [7] and 7 not in ids and len(ids) == 49
    np.testing.assert_array_equal(got[0], x[0])
    cat.close()


def test_a_catalogue_written_before_checksums_gets_them_from_a_writer(tmp_path):
    cat, x = _synthetic(tmp_path)
    cat.close()
    db = sqlite3.connect(tmp_path / "catalogue.sqlite")
    db.execute("ALTER TABLE vectors DROP COLUMN crc")
    db.commit()
    db.close()
    old = Catalogue(tmp_path)
    assert not old.has_crc and len(old.vectors(DIM)[0]) == 50  # read unchecked
    old.upgrade()
    assert old.has_crc and old.db.execute("SELECT COUNT(*) FROM vectors WHERE crc IS NULL").fetchone()[0] == 0
    np.testing.assert_array_equal(old.vectors(DIM)[1], x)
    old.close()


# --- real photos: the CLI on each damage of the issue, then repair ----------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Six real landmark photos indexed with EfficientNet-Lite0 at 128 px; (base folder, index)."""
    base = tmp_path_factory.mktemp("integrity")
    photos = base / "photos"
    photos.mkdir()
    for p in sorted(require_data("landmarks-mini").rglob("*.jpg"))[::3][:6]:
        shutil.copy(p, photos / p.name)
    build_index(photos, base / "ix", **LITE0).close()
    return base


def _results(ix: Path, queries: list[Path]) -> list[list[tuple[str, float]]]:
    with Index.open(ix) as index:
        return [[(h.path, round(h.score, 4)) for h in index.search(q, k=6).hits] for q in queries]


def _damage_catalogue_middle(ix: Path) -> None:
    _scribble(ix / "catalogue.sqlite", 8192)


def _damage_one_descriptor(ix: Path) -> None:
    """Random bytes inside one stored descriptor, where no SQLite check sees them."""
    db = sqlite3.connect(ix / "catalogue.sqlite")
    blob = db.execute("SELECT vec FROM vectors ORDER BY seq LIMIT 1 OFFSET 2").fetchone()[0]
    db.close()
    data = (ix / "catalogue.sqlite").read_bytes()
    at = data.index(blob[:64])
    with open(ix / "catalogue.sqlite", "r+b") as f:
        f.seek(at + 40)
        f.write(np.random.default_rng(1).bytes(64))


DAMAGES = {
    "vector-file-scribbled": (lambda ix: _scribble(ix / "vectors-1.faiss", 1000), r"vectors-1\.faiss is damaged"),
    "vector-file-deleted": (lambda ix: (ix / "vectors-1.faiss").unlink(), r"vectors-1\.faiss .*is missing"),
    "vector-file-truncated": (lambda ix: os.truncate(ix / "vectors-1.faiss", 918), r"\(918 bytes, \d+ written\)"),
    "catalogue-8kb-scribbled": (_damage_catalogue_middle, r"catalogue\.sqlite is damaged|stored descriptors"),
    "one-descriptor-scribbled": (_damage_one_descriptor, r"stored descriptors .* differ from their checksums"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damage_is_found_and_repaired_to_the_same_results(small, tmp_path, capsys, damage):
    ix = tmp_path / "ix"
    shutil.copytree(small / "ix", ix, ignore=shutil.ignore_patterns("*-shm", "writer.lock"))
    queries = sorted((small / "photos").glob("*.jpg"))[:3]
    before = _results(ix, queries)
    assert before[0][0][0] == queries[0].name
    hurt, found = DAMAGES[damage]
    hurt(ix)
    assert main(["index", "verify", "--index", str(ix)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("deepret: error: ") for line in err), err
    assert any(re.search(found, line) for line in err), err
    assert all(f"deepret index repair --index {ix}" in line for line in err), err
    if damage.startswith("vector-file"):  # opening finds it (cheaply): a one-line error, no results
        assert main(["index", "search", "--index", str(ix), str(queries[0])]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("deepret: error: ") and "deepret index repair" in line
    assert main(["index", "repair", "--index", str(ix)]) == 0
    assert "repaired" in capsys.readouterr().out
    assert verify(ix) == []
    assert _results(ix, queries) == before


# --- kill -9 at exact moments of an update -------------------------------------------------------
def _update_killed_at(ix: Path, fault: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(SRC), "DEEPRET_FAULT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deepret", "index", "update", "--index", str(ix), "--quiet"],
                          env=env, capture_output=True, timeout=600).returncode


def test_updates_killed_between_commit_and_publish_leave_a_working_index(small, tmp_path):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    shutil.copytree(small / "photos", photos)
    build_index(photos, ix, **LITE0).close()
    spare = sorted(require_data("landmarks-mini").rglob("*.jpg"))[1::3][:4]
    steps = [("before-catalogue-commit", spare[:2], []), ("after-catalogue-commit", spare[2:], []),
             ("after-vector-save", [], spare[:1])]
    for fault, add, remove in steps:  # each changes more than 20%: the update also writes a vector file
        for p in add:
            shutil.copy(p, photos / p.name)
        for p in remove:
            (photos / p.name).unlink()
        assert _update_killed_at(ix, fault) == -9
        assert verify(ix) == [], fault
        with Index.open(ix) as index:
            v = index.vectors()[1][0]
            assert index.search_vector(v, k=1).hits[0].score == pytest.approx(1.0, abs=1e-4)
    with Index.open(ix) as index:
        index.update()
        ids, _ = index.vectors()
        assert sorted(index.path_of(int(i)).name for i in ids) == sorted(p.name for p in photos.glob("*.jpg"))
        assert len(index.search_vector(index.vectors()[1][0], k=50).hits) == len(ids)
    assert verify(ix) == []


def test_salvage_reads_every_row_around_a_damaged_page(tmp_path):
    from deepret.index.integrity import _salvage

    cat = Catalogue(tmp_path, create=True)
    with cat.write() as db:
        db.executemany("INSERT INTO files (id, path, status) VALUES (?, ?, 'ok')",
                       [(i, f"folder/photo-{i:05d}.jpg") for i in range(1, 3001)])
    cat.close()
    db = sqlite3.connect(tmp_path / "catalogue.sqlite")
    if not db.execute("SELECT 1 FROM pragma_module_list WHERE name = 'dbstat'").fetchone():
        pytest.skip("this SQLite has no dbstat table to find a leaf page of the files table")
    leaf = db.execute("SELECT pageno FROM dbstat WHERE name = 'files' AND pagetype = 'leaf' ORDER BY pageno "
                      "LIMIT 1 OFFSET 10").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(tmp_path / "catalogue.sqlite", "r+b") as f:  # one leaf page of the files table destroyed
        f.seek((leaf - 1) * page)
        f.write(np.random.default_rng(3).bytes(page))
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(tmp_path / "catalogue.sqlite").execute("SELECT status FROM files").fetchall()
    rows = _salvage(tmp_path / "catalogue.sqlite")["files"]
    ids = [r[0] for r in rows]
    assert ids == sorted(set(ids)) and 2800 < len(ids) < 3000  # all but the rows of that one page
    assert all(r[1] == f"folder/photo-{r[0]:05d}.jpg" for r in rows)
