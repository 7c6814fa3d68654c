"""Re-ranking over an index: the same ranking as deepret.rerank on the stored descriptors, the
database side kept in the index folder and recomputed only after a change."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import Index, build_index
from deepret.rerank import Reranker, parse_rerank

from conftest import require_data


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    base = tmp_path_factory.mktemp("rerank-index")
    photos = base / "photos"
    photos.mkdir()
    for p in sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:12]:
        shutil.copy(p, photos / p.name)
    build_index(photos, base / "ix", settings=ExtractSettings(size=224), progress=False).close()
    return base


@pytest.mark.parametrize("spec", ["alpha-qe", "dba:n=2+qe:n=2", "diffusion:k=4,truncate=6"])
def test_reranked_search_equals_the_reranker_on_the_stored_descriptors(small_index, spec):
    with Index.open(small_index / "ix") as index:
        ids, x = index.vectors()
        q = x[3]
        expect_scores, expect_rows = parse_rerank(spec).rerank(x, q[None], 8)
        result = index.search_vector(q, k=5, offset=2, rerank=spec)
        assert [h.id for h in result.hits] == [int(ids[r]) for r in expect_rows[0][2:7]]
        assert np.allclose([h.score for h in result.hits], expect_scores[0][2:7], atol=1e-5)
        assert set(result.timings) == {"rerank"}
        plain = index.search_vector(q, k=5, offset=2)
        assert len(plain.hits) == 5


def test_fitted_state_is_kept_in_the_index_and_refit_after_a_change(small_index, monkeypatch):
    ix = small_index / "ix"
    with Index.open(ix) as index:
        first = index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,truncate=6")
    assert len(list((ix / "rerank").glob("*.npz"))) >= 1

    def no_fit(self, db):
        raise AssertionError("fit ran although the index holds a fitted state for this version")

    monkeypatch.setattr(Reranker, "fit", no_fit)
    with Index.open(ix) as index:  # a new process would do the same: load, not fit
        again = index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,truncate=6")
        assert [h.id for h in again.hits] == [h.id for h in first.hits]
        extra = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[30]
        new = index.root / "added.jpg"
        shutil.copy(extra, new)
        index.add_files([new])
        with pytest.raises(AssertionError, match="fit ran"):  # a new version: the graph is computed again
            index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,truncate=6")
    monkeypatch.undo()
    with Index.open(ix) as index:
        hits = index.search(new, k=3, rerank="alpha-qe").hits
        assert hits[0].path == "added.jpg"
        with pytest.raises(DeepretError, match="unknown"):
            index.search_vector(index.vectors()[1][0], k=3, rerank="nonsense")
