"""The Milvus backend (Milvus Lite, embedded) against FAISS on the same real photos."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import require_data

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import build_index

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def test_milvus_lite_and_faiss_give_the_same_top_k(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    jpgs = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))
    for p in jpgs[:30]:
        shutil.copy(p, photos / p.name)
    settings = ExtractSettings(size=256)
    faiss_ix = build_index(photos, tmp_path / "faiss", settings=settings, progress=False)
    milvus_ix = build_index(photos, tmp_path / "milvus", settings=settings, backend="milvus",
                            uri=str(tmp_path / "photos.db"), progress=False)
    try:
        assert milvus_ix.info()["backend"] == "milvus" and len(milvus_ix) == len(faiss_ix) == 30
        ids, x = faiss_ix.vectors()
        mids, mx = milvus_ix.vectors()
        assert np.array_equal(ids, mids)  # ids match: the catalogue assigns them
        for q in x[::6]:
            a, b = faiss_ix.search_vector(q, k=10).hits, milvus_ix.search_vector(q, k=10).hits
            assert [h.id for h in a] == [h.id for h in b]
            assert [h.path for h in a] == [h.path for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
        # updates reach Milvus: a new photo is found, a deleted one is gone
        new = photos / "zz_new.jpg"
        shutil.copy(jpgs[40], new)
        assert milvus_ix.update().added == 1
        hit = milvus_ix.search(new, k=1).hits[0]
        assert hit.path == "zz_new.jpg" and hit.score == pytest.approx(1.0, abs=1e-4)
        new.unlink()
        assert milvus_ix.update().removed == 1
        assert hit.id not in [h.id for h in milvus_ix.search_vector(milvus_ix.vector_of(int(ids[0])), k=40).hits]
        assert len(milvus_ix.search_vector(x[0], k=40).hits) == 30
    finally:
        faiss_ix.close()
        milvus_ix.close()
    with pytest.raises(DeepretError, match="Milvus backend searches exactly"):
        build_index(photos, tmp_path / "m2", backend="milvus", uri=str(tmp_path / "p2.db"), factory="HNSW32")
