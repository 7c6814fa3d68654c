"""Re-ranking over an index: the same ranking as deepret.rerank on the stored descriptors, the
database side kept in the index folder and recomputed only after a change."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from conftest import require_data

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import Index, build_index
from deepret.index.reranking import IndexReranking
from deepret.rerank import Reranker, parse_rerank


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    base = tmp_path_factory.mktemp("rerank-index")
    photos = base / "photos"
    photos.mkdir()
    for p in sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:12]:
        shutil.copy(p, photos / p.name)
    build_index(photos, base / "ix", settings=ExtractSettings(size=224), progress=False).close()
    return base


@pytest.mark.parametrize("spec", ["alpha-qe", "dba:n=2+qe:n=2", "diffusion:k=4,kq=3,truncate=8"])
def test_reranked_search_equals_the_reranker_on_the_stored_descriptors(small_index, spec):
    with Index.open(small_index / "ix") as index:
        ids, x = index.vectors()
        q = x[3]
        expect_scores, expect_rows = parse_rerank(spec).rerank(x, q[None], 8)
        result = index.search_vector(q, k=5, offset=2, rerank=spec)
        assert np.allclose([h.score for h in result.hits], expect_scores[0][2:7], atol=1e-5)
        # the same ids in the same order, up to the order within exact ties (DBA averages two
        # mutual neighbours into one vector: both then score the same)
        expected = {int(ids[r]): float(sc) for r, sc in zip(expect_rows[0], expect_scores[0])}
        got = [h.id for h in result.hits]
        assert len(set(got)) == 5 and all(abs(expected.get(h.id, -9.0) - h.score) < 1e-5 for h in result.hits)
        untied = [int(ids[r]) for r, sc in zip(expect_rows[0][2:7], expect_scores[0][2:7])
                  if np.sum(np.abs(expect_scores[0] - sc) < 1e-5) == 1]
        assert [i for i in got if i in untied] == untied
        assert set(result.timings) == {"rerank"}
        plain = index.search_vector(q, k=5, offset=2)
        assert len(plain.hits) == 5


def test_fitted_state_is_kept_in_the_index_and_refit_after_a_change(small_index, monkeypatch):
    ix = small_index / "ix"
    with Index.open(ix) as index:
        first = index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,kq=3,truncate=8")
    assert len(list((ix / "rerank").glob("*.npz"))) >= 1

    def no_fit(self, db):
        raise AssertionError("fit ran although the index holds a fitted state for this version")

    monkeypatch.setattr(Reranker, "fit", no_fit)
    with Index.open(ix) as index:  # a new process would do the same: load, not fit
        again = index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,kq=3,truncate=8")
        assert [h.id for h in again.hits] == [h.id for h in first.hits]
        extra = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[30]
        new = index.root / "added.jpg"
        shutil.copy(extra, new)
        index.add_files([new])
        with pytest.raises(AssertionError, match="fit ran"):  # a new version: the graph is computed again
            index.search_vector(index.vectors()[1][0], k=4, rerank="diffusion:k=4,kq=3,truncate=8")
    monkeypatch.undo()
    with Index.open(ix) as index:
        hits = index.search(new, k=3, rerank="alpha-qe").hits
        assert hits[0].path == "added.jpg"
        with pytest.raises(DeepretError, match="unknown"):
            index.search_vector(index.vectors()[1][0], k=3, rerank="nonsense")


class GatedSnapshot:
    """A catalogue stand-in: (version, ids, vectors) of `data`; with `gate` set, a read blocks until it opens."""

    def __init__(self, version: int, n: int, seed: int) -> None:
        self.reads, self.gate, self.entered, self.failures = 0, None, threading.Event(), 0
        self.set(version, n, seed)

    def set(self, version: int, n: int, seed: int) -> None:
        x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
        self.data = (version, np.arange(100, 100 + n), x / np.linalg.norm(x, axis=1, keepdims=True))

    def __call__(self):
        self.reads += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.failures:  # the next `failures` reads fail
            self.failures -= 1
            raise OSError("catalogue unreadable")
        return self.data


def _in_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_searches_keep_the_previous_fit_while_one_thread_refits(tmp_path):
    snap = GatedSnapshot(version=1, n=40, seed=0)
    reranking = IndexReranking(tmp_path, snap)
    old, old_ids = reranking.get("alpha-qe:n=3", 1)
    assert len(old_ids) == 40 and snap.reads == 1
    snap.set(version=2, n=45, seed=1)  # an upload: a new version with more vectors
    snap.gate = threading.Event()
    refit, out = _in_thread(reranking.get, "alpha-qe:n=3", 2)  # the first query after it fits, outside the lock
    assert snap.entered.wait(10)
    meanwhile, out2 = _in_thread(reranking.get, "alpha-qe", 2)  # another spec is not blocked either
    other, out3 = _in_thread(reranking.get, "alpha-qe:n=3", 2)
    other.join(10)
    assert not other.is_alive(), "a search waited for another thread's refit"
    assert out3["result"][0] is old and len(out3["result"][1]) == 40  # the previous fit, its own ids
    snap.gate.set()
    refit.join(10)
    meanwhile.join(10)
    new, new_ids = out["result"]
    assert new is not old and len(new_ids) == 45 and new.fitted_on(snap.data[2])
    assert reranking.get("alpha-qe:n=3", 2)[0] is new and snap.reads == 3  # fitted once per spec and version
    assert len(out2["result"][1]) == 45


def test_a_first_fit_is_waited_for_and_a_failed_one_is_retried(tmp_path):
    snap = GatedSnapshot(version=1, n=30, seed=2)
    snap.gate, snap.failures = threading.Event(), 1
    reranking = IndexReranking(tmp_path, snap)
    first, out1 = _in_thread(lambda: pytest.raises(OSError, reranking.get, "qe:n=2", 1))
    assert snap.entered.wait(10)
    second, out2 = _in_thread(reranking.get, "qe:n=2", 1)  # no fit yet: waits for the first
    second.join(0.3)
    assert second.is_alive()
    snap.gate.set()
    first.join(10)
    second.join(10)
    assert "catalogue unreadable" in str(out1["result"].value)  # the failing fit raised in its own search
    reranker, ids = out2["result"]  # the waiter computed it again, and succeeded
    assert reranker.fitted and len(ids) == 30 and snap.reads == 2
