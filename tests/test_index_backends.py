"""The FAISS backend over a catalogue of synthetic vectors: appends, tombstones, new files, factories;
a distributed build's part files."""
from __future__ import annotations

import numpy as np
import pytest

from deepret.errors import DeepretError
from deepret.index.backends import REBUILD_FRACTION, FaissBackend
from deepret.index.build import _check_trainable, record
from deepret.index.catalogue import Catalogue
from deepret.index.parts import PARTS, merge_parts, open_part

DIM = 32


def _catalogue(path, n, rng):
    cat = Catalogue(path, create=True)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with cat.write() as db:
        db.executemany("INSERT INTO files (id, path, status) VALUES (?, ?, 'ok')", [(i + 1, f"{i}.jpg") for i in range(n)])
        Catalogue.store(db, list(range(1, n + 1)), x)
    return cat, x


def _append(cat, ids, x):
    with cat.write() as db:
        db.executemany("INSERT INTO files (id, path, status) VALUES (?, ?, 'ok')", [(int(i), f"{i}.jpg") for i in ids])
        Catalogue.store(db, list(ids), x)
        Catalogue.bump(db)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat"])
def test_appends_and_removals_without_rewriting_the_vector_file(tmp_path, factory, monkeypatch):
    rng = np.random.default_rng(0)
    cat, x = _catalogue(tmp_path, 400, rng)
    writer = FaissBackend(tmp_path, factory, DIM)
    writer.publish(cat, force=True)
    reader = FaissBackend(tmp_path, factory, DIM)
    reader.refresh(cat)
    reader.set_params("efSearch=400" if "HNSW" in factory else "nprobe=8" if "IVF" in factory else "")
    _, ids = reader.search(x[:5], 1)
    assert ids[:, 0].tolist() == [1, 2, 3, 4, 5]
    file = tmp_path / "vectors-1.faiss"
    stamp = file.stat().st_mtime_ns
    # one new vector: appended to the catalogue only; the reader reads just that row
    new = rng.standard_normal((1, DIM)).astype(np.float32)
    new /= np.linalg.norm(new)
    _append(cat, [401], new)
    writer.publish(cat)
    read_after = []
    real = Catalogue.vectors
    monkeypatch.setattr(Catalogue, "vectors", lambda self, dim, after_seq=0, upto_seq=None:
                        read_after.append(after_seq) or real(self, dim, after_seq, upto_seq))
    reader.refresh(cat)
    monkeypatch.undo()
    assert read_after == [400] and file.stat().st_mtime_ns == stamp and cat.meta("base")["generation"] == 1
    assert reader.search(new, 1)[1][0, 0] == 401
    # removed ids are filtered (HNSW cannot remove in place)
    with cat.write() as db:
        Catalogue.remove(db, [401, 1])
        Catalogue.bump(db)
    writer.publish(cat)
    reader.refresh(cat)
    scores, ids = reader.search(np.vstack([new, x[0]]), 3)
    assert 401 not in ids and 1 not in ids and ids.shape == (2, 3) and (ids > 0).all()
    # past REBUILD_FRACTION of changes: a new file from the stored descriptors, tombstones cleared
    k = int(REBUILD_FRACTION * 400) + 1
    extra = rng.standard_normal((k, DIM)).astype(np.float32)
    _append(cat, range(1000, 1000 + k), extra / np.linalg.norm(extra, axis=1, keepdims=True))
    writer.publish(cat)
    assert cat.meta("base")["generation"] == 2 and len(cat.tombstones()) == 0
    assert (tmp_path / "vectors-2.faiss").is_file()
    reader.refresh(cat)
    assert reader.vi.ntotal == 399 + k and reader.search(x[1:2], 1)[1][0, 0] == 2
    cat.close()


def test_factories_that_cannot_be_trained_are_refused_before_extracting():
    with pytest.raises(DeepretError, match=r"needs at least 1024 training vectors.*use one of Flat, HNSW32"):
        _check_trainable("IVF1024,Flat", 50, None, 1280)
    with pytest.raises(DeepretError, match="not valid"):
        _check_trainable("IVF1024,Nonsense", 50, None, 1280)
    _check_trainable("IVF1024,Flat", 50, "some/folder", 1280)  # --train-on: trained on those


def test_eval_factory_reports_map_next_to_exact(data_root, capsys):
    from deepret.cli import main

    common = ["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), "--size", "96", "--quiet"]
    assert main(common + ["--factory", "IVF4,Flat", "--search-params", "nprobe=4"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if " vs exact " in ln]
    assert lines, out
    for line in lines:  # all 4 lists probed: the same ranking as exact search
        values = line.split("mAP ")[1].split(" vs exact ")
        assert float(values[0]) == pytest.approx(float(values[1]), abs=0.01)
    assert main(common + ["--factory", "IVF4,Nonsense"]) == 2
    assert "not valid" in capsys.readouterr().err


def test_rank_parts_have_the_catalogue_tables_and_merge_into_it(tmp_path):
    rng = np.random.default_rng(2)
    cat = Catalogue(tmp_path, create=True)
    with cat.write() as db:
        db.executemany("INSERT INTO files (path) VALUES (?)", [(f"{i}.jpg",) for i in range(4)])
    rows = cat.db.execute("SELECT id, path FROM files ORDER BY id").fetchall()
    x = rng.standard_normal((3, DIM)).astype(np.float32)
    for rank in (0, 1):
        part = open_part(tmp_path, rank)
        tables = {r[0] for r in part.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"files", "vectors", "meta", "tombstones"} <= tables
        assert part.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        mine = rows[rank::2]
        with part.write() as db:
            if rank == 0:
                record(db, mine, {mine[0][0]: (640, 480), mine[1][0]: (10, 20)}, x[:2], {})
            else:
                record(db, mine, {mine[0][0]: (30, 40)}, x[2:], {mine[1][0]: "corrupt"})
        part.close()
    merge_parts(cat)
    assert not list((tmp_path / PARTS).glob("rank-*.sqlite"))
    files = cat.db.execute("SELECT id, status, width, height, reason FROM files ORDER BY id").fetchall()
    assert files == [(1, "ok", 640, 480, None), (2, "ok", 30, 40, None), (3, "ok", 10, 20, None),
                     (4, "skipped", None, None, "corrupt")]
    ids, got, _ = cat.vectors(DIM)
    np.testing.assert_array_equal(got[np.argsort(ids)], x[[0, 2, 1]])
    cat.close()

