"""Re-ranking: each method moves a constructed ranking exactly as its formula says (2-D unit vectors,
worked out by angles: the plain average of two unit vectors points along their bisector)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from deepret.errors import DeepretError
from deepret.evaluate import compute_map
from deepret.rerank import DEFAULTS, Reranker, parse_rerank

PLAIN = Reranker([])  # no methods: plain exact search


def unit(*degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def cosd(degrees) -> np.ndarray:
    return np.cos(np.radians(degrees))


def angle_of(v: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(v[..., 1], v[..., 0]))


# database at 0, 45 and 60 degrees; the query at 28: plain ranking 45 (17 away), 0 (28), 60 (32)
QE_DB, QE_QUERY = unit(0, 45, 60), unit(28)


def test_plain_ranking_of_the_qe_example():
    scores, ids = PLAIN.rerank(QE_DB, QE_QUERY)
    assert ids[0].tolist() == [1, 0, 2]
    np.testing.assert_allclose(scores[0], cosd([17, 28, 32]), atol=1e-6)


def test_average_qe_moves_the_query_to_the_bisector():
    # n=1: q' = normalise(q + d_45) points at (28 + 45) / 2 = 36.5 degrees, so 60 (23.5 away) now beats 0 (36.5)
    scores, ids = parse_rerank("qe:n=1").rerank(QE_DB, QE_QUERY)
    assert ids[0].tolist() == [1, 2, 0]
    np.testing.assert_allclose(scores[0], cosd([8.5, 23.5, 36.5]), atol=1e-6)


def test_alpha_qe_weights_neighbours_by_similarity_cubed():
    # n=1, alpha=3: q' = q + w d_45 with w = cos(17)^3; its angle is 28 + atan(w sin17 / (1 + w cos17))
    w = cosd(17) ** 3
    expected = 28 + np.degrees(np.arctan(w * np.sin(np.radians(17)) / (1 + w * cosd(17))))
    assert 35.9 < expected < 36.0  # between q and the bisector: the neighbour weighs less than the query
    scores, ids = parse_rerank("alpha-qe:n=1,alpha=3").rerank(QE_DB, QE_QUERY)
    assert ids[0].tolist() == [1, 2, 0]
    np.testing.assert_allclose(scores[0], cosd(np.abs(expected - np.array([45, 60, 0]))), atol=1e-6)
    # alpha = 0 is average query expansion
    np.testing.assert_allclose(parse_rerank("alpha-qe:n=1,alpha=0").rerank(QE_DB, QE_QUERY)[0],
                               parse_rerank("qe:n=1").rerank(QE_DB, QE_QUERY)[0], atol=1e-6)


def test_alpha_qe_ignores_neighbours_of_negative_similarity():
    # n=2 on a database at 45 and 160 degrees (132 away from q: cosine < 0, weight 0): q' = q + cos(17)^3 d_45
    db = unit(45, 160)
    alpha_scores, _ = parse_rerank("alpha-qe:n=2").rerank(db, QE_QUERY)
    one = parse_rerank("alpha-qe:n=1").rerank(db, QE_QUERY)[0]
    np.testing.assert_allclose(alpha_scores, one, atol=1e-6)
    # average QE does take the 160-degree vector: q + d_45 + d_160 points at 83.3 degrees, so 45 and 160 both
    # lie within 77 degrees of it
    avg = unit(28)[0] + unit(45)[0] + unit(160)[0]
    np.testing.assert_allclose(parse_rerank("qe:n=2").rerank(db, QE_QUERY)[0][0],
                               cosd(np.abs(angle_of(avg) - np.array([45, 160]))), atol=1e-6)


# database at 0, 30, 50 and 95 degrees; nearest other vector: 0 -> 30, 30 -> 50, 50 -> 30, 95 -> 50
DBA_DB = unit(0, 30, 50, 95)


def test_average_dba_replaces_each_vector_by_the_bisector_with_its_neighbour():
    reranker = parse_rerank("dba:n=1").fit(DBA_DB)
    np.testing.assert_allclose(angle_of(reranker.state()["db"]), [15, 40, 40, 72.5], atol=1e-4)
    # the query at 20 degrees: plain order 30, 0, 50, 95 becomes 0 (now at 15), {30, 50} (both at 40), 95
    assert PLAIN.rerank(DBA_DB, unit(20))[1][0].tolist() == [1, 0, 2, 3]
    scores, ids = reranker.rerank(DBA_DB, unit(20))
    assert ids[0, 0] == 0 and set(ids[0, 1:3].tolist()) == {1, 2} and ids[0, 3] == 3
    np.testing.assert_allclose(scores[0], cosd([5, 20, 20, 52.5]), atol=1e-6)


def test_alpha_dba_weights_the_neighbour_by_similarity_cubed():
    # x' = x + cos(t)^3 x_nn, t the angle to the neighbour: x moves by atan(w sin t / (1 + w cos t)) towards it
    def moved(t: float) -> float:
        w = cosd(t) ** 3
        return float(np.degrees(np.arctan(w * np.sin(np.radians(t)) / (1 + w * cosd(t)))))

    expected = [0 + moved(30), 30 + moved(20), 50 - moved(20), 95 - moved(45)]
    reranker = parse_rerank("alpha-dba:n=1").fit(DBA_DB)
    np.testing.assert_allclose(angle_of(reranker.state()["db"]), expected, atol=1e-4)
    _, ids = reranker.rerank(DBA_DB, unit(20))
    assert ids[0].tolist() == [0, 1, 2, 3]  # 30's new vector (39.1) is now nearer to 20 than 50's (40.9)


def test_combination_applies_dba_before_qe():
    # DBA (n=1) moves 0, 20 to 10 and 80, 100 to 90; QE (n=1) of the query at 40 then averages it with a
    # 10-degree vector: q' at 25, 15 away from {0, 20} and 65 from {80, 100}
    db = unit(0, 20, 80, 100)
    scores, ids = parse_rerank("dba:n=1+qe:n=1").rerank(db, unit(40))
    np.testing.assert_allclose(scores[0], cosd([15, 15, 65, 65]), atol=1e-6)
    assert set(ids[0, :2].tolist()) == {0, 1}
    # QE alone averages with the raw 20-degree vector: q' at 30, scored against the raw database
    np.testing.assert_allclose(parse_rerank("qe:n=1").rerank(db, unit(40))[0][0], cosd([10, 30, 50, 70]), atol=1e-6)
    with pytest.raises(DeepretError, match="out of order"):
        parse_rerank("qe+dba")


# a chain: with k=2 the mutual neighbours are 0-15, 15-40 and 40-70; 150 has none
CHAIN_DB = unit(0, 15, 40, 70, 150)


def test_diffusion_solves_the_linear_system_of_its_hand_built_graph():
    gamma, alpha = 3.0, 0.5  # with alpha near 1 f tends to the (degree-shaped) stationary state of the chain
    w = np.zeros((5, 5))
    for i, j, t in ((0, 1, 15), (1, 2, 25), (2, 3, 30)):
        w[i, j] = w[j, i] = cosd(t) ** gamma
    d = 1 / np.sqrt(w.sum(axis=1) + 1e-12)
    s = d[:, None] * w * d[None, :]
    # the query at 100 degrees starts at its nearest vector only (kq=1): 70, with y = cos(30)^3
    y = np.zeros(5)
    y[3] = cosd(30) ** gamma
    f = np.linalg.solve(np.eye(5) - alpha * s, y)
    assert np.all(np.diff(f[[3, 2, 1, 0]]) < 0) and f[4] == 0  # decreasing along the chain, 150 unreached
    scores, ids = parse_rerank("diffusion:k=2,kq=1,alpha=0.5,iterations=50").rerank(CHAIN_DB, unit(100))
    # plain similarity ranks 150 (50 away) second; diffusion follows the chain and puts it last
    assert ids[0].tolist() == [3, 2, 1, 0, 4]
    np.testing.assert_allclose(scores[0], f[[3, 2, 1, 0, 4]], rtol=1e-4, atol=1e-9)
    # the paper's alpha = 0.99: still the exact solution, ranked by f (CG converges in <= 4 steps here)
    f = np.linalg.solve(np.eye(5) - 0.99 * s, y)
    scores, ids = parse_rerank("diffusion:k=2,kq=1,iterations=50").rerank(CHAIN_DB, unit(100))
    assert ids[0].tolist() == np.argsort(-f, kind="stable").tolist()
    np.testing.assert_allclose(scores[0], np.sort(f)[::-1], rtol=1e-4, atol=1e-9)


def test_truncated_diffusion_solves_the_subgraph_of_the_query_top_items():
    # truncate=3: the query at 100 degrees keeps its plain top 3, 70 (30 away), 150 (50) and 40 (60); the
    # subgraph's one edge is 40-70, normalised within it to S = [[0, 1], [1, 0]] (40's edge to 15 is cut
    # off), so f_70 = y / (1 - a^2) and f_40 = a y / (1 - a^2); 150 is unreached (f = 0) but stays
    # ahead of 15 and 0, outside the subgraph, which follow in plain order with score 0
    a, y = 0.5, cosd(30) ** 3
    scores, ids = parse_rerank(f"diffusion:k=2,kq=1,truncate=3,alpha={a},iterations=50").rerank(CHAIN_DB, unit(100))
    assert ids[0].tolist() == [3, 2, 4, 1, 0]
    np.testing.assert_allclose(scores[0], [y / (1 - a * a), a * y / (1 - a * a), 0, 0, 0], rtol=1e-6, atol=1e-12)
    # truncate >= N is the whole graph, exactly the untruncated diffusion above
    whole = parse_rerank("diffusion:k=2,kq=1,alpha=0.5,iterations=50").rerank(CHAIN_DB, unit(100))
    at_n = parse_rerank("diffusion:k=2,kq=1,truncate=5,alpha=0.5,iterations=50").rerank(CHAIN_DB, unit(100))
    for x, z in zip(whole, at_n):
        np.testing.assert_array_equal(x, z)


def test_truncated_solver_over_all_items_equals_the_system_kept_from_fit():
    rng = np.random.default_rng(3)
    db = _l2n(rng.normal(size=(120, 8)))
    queries = _l2n(db[:5] + 0.3 * rng.normal(size=(5, 8)))
    kept = parse_rerank("diffusion:k=6").fit(db)  # truncate 1000 >= 120: I - alpha S computed once in fit
    assert kept.system is not None
    per_query = parse_rerank("diffusion:k=6").fit(db)
    per_query._system = None  # force the truncated path: the subgraph of all 120, rebuilt for each query
    (s1, i1), (s2, i2) = kept.rerank(None, queries), per_query.rerank(None, queries)
    np.testing.assert_array_equal(i1[:, :50], i2[:, :50])
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-9)


def test_diffusion_builds_no_dense_n_by_n_matrix():
    import tracemalloc

    rng = np.random.default_rng(4)
    n = 4000
    db = _l2n(rng.normal(size=(n, 16)))
    tracemalloc.start()
    try:
        reranker = parse_rerank("diffusion:k=10,truncate=200").fit(db)
        reranker.rerank(None, db[:3], k=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 8, peak  # a dense float32 N x N would be 64 MB
    assert reranker.graph.nnz <= n * 10 and reranker.system is None  # 200 < N: per-query subgraphs


def test_the_fit_is_keyed_by_the_database_content_not_its_shape(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = _l2n(rng.normal(size=(30, 4))), _l2n(rng.normal(size=(30, 4)))
    expect_b = parse_rerank("dba:n=2").rerank(b, a[:2])[1]
    reranker = parse_rerank("dba:n=2")
    fits = []
    original = Reranker.fit
    monkeypatch.setattr(Reranker, "fit", lambda self, db: fits.append(1) or original(self, db))
    first = reranker.rerank(a, a[:2])
    assert len(fits) == 1 and reranker.fitted_on(a) and not reranker.fitted_on(b)
    reranker.rerank(a.copy(), a[:2])  # equal content, another array: no refit
    reranker.rerank(None, a[:2])      # the fitted database, no check
    assert len(fits) == 1
    other = reranker.rerank(b, a[:2])  # same shape, other content: refit
    assert len(fits) == 2
    np.testing.assert_array_equal(other[1], expect_b)
    assert not np.array_equal(first[0], other[0])
    a2 = a.copy()
    a2[7, 1] += 1e-3  # one value changed
    reranker.rerank(a, a[:2])
    reranker.rerank(a2, a[:2])
    assert len(fits) == 4


def _l2n(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_diffusion_beats_plain_similarity_on_two_moons():
    from sklearn.datasets import make_moons

    points, moon = make_moons(400, noise=0.06, random_state=0)
    x = np.c_[0.3 * points, np.ones(len(points))]  # onto the unit sphere, the moons in a small cap
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    gnd = [{"ok": np.flatnonzero((moon == moon[i]) & (np.arange(len(x)) != i)), "junk": np.array([i])}
           for i in range(len(x))]
    plain = compute_map(PLAIN.ranks(x, x), gnd)[0]
    diffused = compute_map(parse_rerank("diffusion").ranks(x, x), gnd)[0]  # the paper's defaults
    # truncated to the top 200 (half the points, each moon holds 200): the rest keep their plain order
    truncated = compute_map(parse_rerank("diffusion:truncate=200").ranks(x, x), gnd)[0]
    assert plain < 0.85 and diffused > 0.95 and plain + 0.03 < truncated < diffused, (plain, diffused, truncated)


def test_top_k_is_the_head_of_the_full_ranking():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(60, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    for spec in ("alpha-qe", "dba+qe:n=2", "diffusion:k=5", "diffusion:k=5,truncate=20"):
        reranker = parse_rerank(spec)
        full, top = reranker.rerank(db, db[:3])[1], reranker.rerank(db, db[:3], k=7)[1]
        assert top.shape == (3, 7) and np.array_equal(full[:, :7], top)
        assert all(sorted(row) == list(range(60)) for row in full.tolist())


def test_state_round_trip_through_an_npz_file():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(80, 6)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    spec = "alpha-dba:n=3+alpha-qe:n=5+diffusion:k=10"
    fitted = parse_rerank(spec).fit(db)
    buf = io.BytesIO()
    np.savez(buf, **fitted.state())
    buf.seek(0)
    with np.load(buf) as z:
        restored = parse_rerank(spec).load_state(dict(z))
    queries = db[:4] + 0.1
    for a, b in zip(fitted.rerank(db, queries), restored.rerank(db, queries)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DeepretError, match="is for"):
        parse_rerank("dba").load_state(fitted.state())
    with pytest.raises(DeepretError, match="fit"):
        parse_rerank("dba").state()
    old = {k: v for k, v in fitted.state().items() if k not in ("format", "fingerprint")}
    with pytest.raises(DeepretError, match="older format"):
        parse_rerank(spec).load_state(old)
    assert restored.fitted_on(db)  # the fingerprint travels with the state: rerank(db, ...) does not refit


@pytest.mark.parametrize("spec, words", [
    ("bogus", ["'bogus'", *DEFAULTS]),
    ("qe:m=3", ["'m'", "n"]),
    ("diffusion:beta=1", ["k", "kq", "truncate", "gamma", "alpha", "iterations"]),
    ("qe:n=two", ["whole number"]),
    ("qe:n=0", [">= 1"]),
    ("diffusion:alpha=1", ["[0, 1)"]),
    ("alpha-qe:alpha", ["alpha=VALUE"]),
    ("", ["empty"]),
    ("diffusion+diffusion", ["at most one diffusion"]),
])
def test_bad_specs_are_one_line_errors_naming_the_valid_choices(spec, words):
    with pytest.raises(DeepretError) as err:
        parse_rerank(spec)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_spec_is_normalised_with_the_defaults_filled_in():
    assert parse_rerank("dba:n=3+alpha-qe").spec == "dba:n=3+alpha-qe:n=10,alpha=3"
    assert parse_rerank("diffusion").spec == "diffusion:k=50,kq=10,truncate=1000,gamma=3,alpha=0.99,iterations=20"
