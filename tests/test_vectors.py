"""FAISS factories behind VectorIndex: ids, training checks, persistence, rankings for evaluation."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from deepret.errors import DeepretError
from deepret.fileio import atomic_write_bytes
from deepret.vectors import VectorIndex, factory_ranks, fitting_factories, min_train_vectors


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat", "IVF8,PQ8x4", "OPQ8,IVF8,PQ8x4"])
def test_factories_return_the_stored_ids(factory, tmp_path):
    x = _unit(600, 32)
    vi = VectorIndex(factory, 32)
    vi.add(x, np.arange(600) + 1000)
    vi.set_params("nprobe=8" if "IVF" in factory else "")
    scores, ids = vi.search(x[:10], 5)
    found = (ids == (np.arange(10) + 1000)[:, None]).any(axis=1)
    assert ids.shape == (10, 5) and (found.all() if "PQ" not in factory else found.mean() >= 0.8)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    again = VectorIndex.load(vi.save(tmp_path / "v.faiss"), factory)
    assert (again.search(x[:10], 5)[1] == ids).all()
    assert vi.bytes_per_vector() > 0


def test_pq_compresses_and_flat_matches_numpy():
    x, q = _unit(2000, 64), _unit(5, 64, seed=1)
    flat = VectorIndex("Flat", 64)
    flat.add(x, np.arange(2000))
    scores, ids = flat.search(q, 10)
    expect = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert (ids == expect).all() and np.allclose(scores, np.take_along_axis(q @ x.T, expect, 1), atol=1e-5)
    pq = VectorIndex("IVF8,PQ8x4", 64)  # 4-bit codes: quick to train on a small set
    pq.add(x, np.arange(2000))
    assert pq.bytes_per_vector() < flat.bytes_per_vector() / 8


def test_too_few_training_vectors_names_the_factories_that_fit():
    assert min_train_vectors("OPQ32,IVF1024,PQ32") == 1024 and min_train_vectors("IVF16,PQ8x4") == 16
    assert min_train_vectors("Flat") == 0 and min_train_vectors("HNSW32") == 0
    # OPQ's rotation needs as many vectors as dimensions (FAISS crashes the process on fewer)
    assert min_train_vectors("OPQ8,PQ8x4", dim=1280) == 1280 and min_train_vectors("PQ8x4", dim=1280) == 16
    assert min_train_vectors("OPQ32,IVF1024,PQ32", dim=512) == 1024
    assert min_train_vectors("PCA256,OPQ16,PQ16", dim=1280) == 256  # the rotation sees 256-d vectors


def test_opq_with_fewer_vectors_than_dimensions_is_refused_not_a_crash():
    x = np.random.default_rng(0).standard_normal((100, 128)).astype("float32")
    with pytest.raises(DeepretError, match="needs at least 128 training vectors"):
        VectorIndex("OPQ8,PQ8x4", 128).train(x)
    assert not any(f.startswith("OPQ") for f in fitting_factories(300, 512))
    assert any(f.startswith("OPQ") for f in fitting_factories(600, 512))
    with pytest.raises(DeepretError, match=r"needs at least 1024 training vectors, got 100: .*Flat, HNSW32"):
        VectorIndex("IVF1024,PQ32", 64).train(_unit(100, 64))
    fits = fitting_factories(300, 16)
    assert fits[:3] == ["Flat", "HNSW32", "IVF4,Flat"] and len(fits) == 5
    assert all(min_train_vectors(f) <= 300 for f in fits)
    for f in fits[:3]:  # the quick ones really train on that many vectors
        VectorIndex(f, 16).train(_unit(300, 16))


def test_bad_factory_dimension_and_removal_errors():
    with pytest.raises(DeepretError, match="not valid"):
        VectorIndex("IVF,nonsense", 32)
    vi = VectorIndex("Flat", 32)
    vi.add(_unit(10, 32), np.arange(10))
    with pytest.raises(DeepretError, match="dimension 16 given to an index of dimension 32"):
        vi.search(_unit(1, 16), 3)
    assert vi.remove(np.array([0, 1])) == 2 and vi.ntotal == 8
    hnsw = VectorIndex("HNSW32", 32)
    hnsw.add(_unit(10, 32), np.arange(10))
    with pytest.raises(DeepretError, match="cannot remove"):
        hnsw.remove(np.array([0]))


def test_factory_ranks_is_a_full_permutation_even_when_ivf_misses_images():
    x, q = _unit(400, 16), _unit(3, 16, seed=2)
    exact = factory_ranks(x, q, "Flat")
    assert (exact == np.argsort(-(x @ q.T), axis=0, kind="stable")).all()
    approx = factory_ranks(x, q, "IVF16,Flat", params="nprobe=1")  # one cell: most images unreached
    for col in approx.T:
        assert sorted(col) == list(range(400))


def test_atomic_writes_get_the_umask_mode_and_leave_no_temp_on_error(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        from deepret.fileio import atomic_open

        with pytest.raises(RuntimeError), atomic_open(p) as f:
            f.write(b"half")
            raise RuntimeError("stop")
        assert p.read_bytes() == b"{}" and os.listdir(tmp_path) == ["a.json"]
    finally:
        os.umask(old)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,PQ8x4", "OPQ8,IVF8,PQ8x4", "HNSW32", "PCA16,IVF8,Flat"])
def test_bytes_per_vector_is_the_serialized_size_without_serialising(factory, monkeypatch):
    import faiss

    x = _unit(3000, 32)
    vi = VectorIndex(factory, 32)
    vi.add(x, np.arange(3000))
    serialized = len(faiss.serialize_index(vi.index)) / 3000
    monkeypatch.setattr(faiss, "serialize_index", lambda index: pytest.fail("the whole index was serialised"))
    assert vi.bytes_per_vector() == pytest.approx(serialized, rel=0.01)
    if factory == "Flat":
        assert 32 * 4 + 8 <= vi.bytes_per_vector() < 32 * 4 + 8 + 1  # float32 codes and int64 ids
    vi.add(x[:100], np.arange(3000, 3100))  # the figure follows the count
    monkeypatch.undo()
    assert vi.bytes_per_vector() == pytest.approx(len(faiss.serialize_index(vi.index)) / 3100, rel=0.01)
