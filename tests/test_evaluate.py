"""Tests for deepret.evaluate: hand-computed AP and mP@k, revisitop reference, official gnd."""

import json
import pickle

import numpy as np
import pytest
from conftest import require_data

from deepret.errors import DeepretError
from deepret.evaluate import (
    EvalResult,
    average_precision,
    compute_map,
    evaluate,
    format_table,
    label_results,
    protocol_gnd,
    protocols_of,
    rank,
    results_to_json,
)

DATASETS = ["oxford5k", "paris6k", "roxford5k", "rparis6k", "oxford5k-mini"]


def load_gnd(name: str) -> dict:
    path = require_data(name, f"gnd_{name}.pkl")
    with open(path, "rb") as f:
        return pickle.load(f)


# --- reference: a line-by-line transcription of revisitop's python/evaluate.py loops ------------


def ref_compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in range(len(ranks)):
        rank_ = ranks[j]
        precision_0 = 1.0 if rank_ == 0 else float(j) / rank_
        precision_1 = float(j + 1) / (rank_ + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def ref_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    map_ = 0.0
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in range(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            prs[i, :] = float("nan")
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = ref_compute_ap(pos, len(qgnd))
        map_ = map_ + ap
        aps[i] = ap
        pos += 1
        for j in range(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    return map_ / (nq - nempty), aps, pr / (nq - nempty), prs


def assert_same_as_reference(ranks, gnd, kappas=(1, 5, 10)):
    got = compute_map(ranks, gnd, kappas)
    want = ref_compute_map(ranks, gnd, kappas)
    assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-15)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)  # nan == nan here


# --- average_precision: hand-computed values --------------------------------------------------


@pytest.mark.parametrize(
    "positions, n_pos, expected",
    [
        # one positive at rank 0: (1 + 1) * 1 / 2 = 1
        ([0], 1, 1.0),
        # all positives first: every trapezoid has height 1
        ([0, 1, 2, 3], 4, 1.0),
        # ranks 0 and 2 of 2 positives: j=0,r=0: (1 + 1/1)/2 * 1/2 = 1/2;
        # j=1,r=2: (1/2 + 2/3)/2 * 1/2 = 7/24  ->  19/24 = 0.791666...
        ([0, 2], 2, 19 / 24),
        # ranks 1 and 6 of 2: j=0,r=1: (0/1 + 1/2)/2 * 1/2 = 1/8;
        # j=1,r=6: (1/6 + 2/7)/2 * 1/2 = 19/168  ->  40/168 = 5/21 = 0.238095...
        ([1, 6], 2, 5 / 21),
        # ranks 1 and 3, but 3 positives (one never retrieved): j=0,r=1: (0 + 1/2)/2 * 1/3 = 1/12;
        # j=1,r=3: (1/3 + 2/4)/2 * 1/3 = 5/36  ->  8/36 = 2/9 = 0.2222...
        ([1, 3], 3, 2 / 9),
        # nothing retrieved
        ([], 3, 0.0),
    ],
)
def test_average_precision_hand_computed(positions, n_pos, expected):
    assert average_precision(np.array(positions), n_pos) == pytest.approx(expected, rel=1e-12)
    assert ref_compute_ap(np.array(positions), n_pos) == pytest.approx(expected, rel=1e-12)


# --- compute_map: junk, empty queries, mP@k ---------------------------------------------------


def test_junk_is_removed_before_ap():
    # ranking of ids 10 (junk), 11 (pos), 12 (junk), 13 (neg), 14 (pos)
    # raw positive positions 1 and 4; junk at 0 and 2 -> shifted to 0 and 2 -> AP 19/24 as above
    ranks = np.array([[10, 11, 12, 13, 14]]).T
    gnd = [{"ok": [11, 14], "junk": [10, 12]}]
    m, aps, _, _ = compute_map(ranks, gnd)
    assert m == pytest.approx(19 / 24) and aps[0] == pytest.approx(19 / 24)
    # without junk removal the positives sit at 1 and 4: (0 + 1/2)/4 + (1/4 + 2/5)/4 = 0.2875
    m_nojunk, *_ = compute_map(ranks, [{"ok": [11, 14]}])
    assert m_nojunk == pytest.approx(0.2875)
    # junk ranked after every positive changes nothing
    ranks2 = np.array([[11, 13, 14, 10, 12]]).T  # positives at 0 and 2
    assert compute_map(ranks2, gnd)[0] == pytest.approx(19 / 24)


def test_query_without_positives_is_left_out():
    ranks = np.tile(np.arange(5)[:, None], (1, 3))
    gnd = [{"ok": [0], "junk": []}, {"ok": [], "junk": [1]}, {"ok": [1, 3], "junk": []}]
    m, aps, mpr, prs = compute_map(ranks, gnd)
    # query 0: AP 1; query 2: positives at ranks 1, 3 of 2 -> (0+1/2)/4 + (1/3+2/4)/4 = 1/3
    assert aps[0] == pytest.approx(1.0) and aps[2] == pytest.approx(1 / 3)
    assert np.isnan(aps[1]) and np.isnan(prs[1]).all()
    assert m == pytest.approx((1 + 1 / 3) / 2)
    np.testing.assert_allclose(mpr, np.nanmean(prs, axis=0))
    assert_same_as_reference(ranks, gnd)


def test_all_queries_without_positives_give_nan():
    m, aps, mpr, _ = compute_map(np.zeros((3, 2), dtype=int), [{"ok": []}, {"ok": []}])
    assert np.isnan(m) and np.isnan(aps).all() and np.isnan(mpr).all()


@pytest.mark.parametrize(
    "ranking, expected_prs",
    [
        # positives at 1-based 1 and 3 (of 10): kq = min(max(pos)=3, k)
        # P@1 = #(pos<=1)/1 = 1; P@5 = #(pos<=3)/3 = 2/3 (not 2/5!); P@10 = 2/3
        ([0, 5, 1, 6, 7, 8, 9, 2, 3, 4], [1.0, 2 / 3, 2 / 3]),
        # positives at 1-based 2 and 7: P@1 = 0/1; P@5 = 1/5; P@10: kq = 7 -> 2/7
        ([5, 0, 6, 7, 8, 9, 1, 2, 3, 4], [0.0, 1 / 5, 2 / 7]),
        # positives at 1-based 1 and 2 only: P@5 = P@10 = 2/2 = 1 (revisitop caps k at the last one)
        ([0, 1, 5, 6, 7, 8, 9, 2, 3, 4], [1.0, 1.0, 1.0]),
    ],
)
def test_precision_at_k_revisitop_definition(ranking, expected_prs):
    gnd = [{"ok": [0, 1], "junk": []}]
    _, _, mpr, prs = compute_map(np.array([ranking]).T, gnd)
    np.testing.assert_allclose(prs[0], expected_prs)
    np.testing.assert_allclose(mpr, expected_prs)


def test_precision_at_k_after_junk_shift():
    # ids 8, 9 junk: raw positive positions 2, 5 -> shifted by 2 -> 1-based 1 and 4
    # P@1 = 1; P@5: kq = 4 -> 2/4; P@10 = 2/4
    ranks = np.array([[8, 9, 0, 5, 6, 1, 7, 2, 3, 4]]).T
    _, _, _, prs = compute_map(ranks, [{"ok": [0, 1], "junk": [8, 9]}])
    np.testing.assert_allclose(prs[0], [1.0, 0.5, 0.5])


def test_truncated_ranking_missing_all_positives_scores_zero():
    # revisitop crashes on max([]); we score such a query 0 and keep it in the mean
    m, aps, _, prs = compute_map(np.array([[3, 4]]).T, [{"ok": [0], "junk": []}])
    assert m == 0.0 and aps[0] == 0.0 and (prs[0] == 0).all()


def test_matches_revisitop_reference_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_db, n_q = int(rng.integers(5, 60)), int(rng.integers(1, 6))
        gnd = []
        for _ in range(n_q):
            ids = rng.permutation(n_db)
            n_pos, n_junk = int(rng.integers(0, n_db // 2)), int(rng.integers(0, n_db // 3))
            gnd.append({"ok": ids[:n_pos].tolist(), "junk": ids[n_pos : n_pos + n_junk].tolist()})
        ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
        if all(len(g["ok"]) == 0 for g in gnd):
            continue
        assert_same_as_reference(ranks, gnd, kappas=(1, 3, 5, 10))


# --- rank, validation ---------------------------------------------------------------------------


def test_rank_descending_and_stable():
    scores = np.array([[0.1, 0.9], [0.5, 0.9], [0.5, 0.2], [0.9, 0.0]])
    np.testing.assert_array_equal(rank(scores), [[3, 0], [1, 1], [2, 2], [0, 3]])


def test_evaluate_accepts_scores_or_ranks():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((20, 3))
    gnd = [{"ok": [0, 4], "junk": [1]}, {"ok": [7], "junk": []}, {"ok": [2, 3, 9], "junk": [5, 6]}]
    a, b = evaluate(scores, gnd)["old"], evaluate(rank(scores), gnd)["old"]
    assert a.map == b.map and a.mp_at_k == b.mp_at_k
    m, aps, mpr, _ = ref_compute_map(rank(scores), gnd)
    assert a.map == pytest.approx(100 * m)
    np.testing.assert_allclose(a.aps, 100 * aps)
    assert a.mp_at_k == pytest.approx({1: 100 * mpr[0], 5: 100 * mpr[1], 10: 100 * mpr[2]})


def test_shape_errors_name_the_shapes():
    gnd = [{"ok": [0]}, {"ok": [1]}, {"ok": [2]}]
    with pytest.raises(DeepretError, match=r"\(3, 10\).*3 queries.*transposed"):
        evaluate(np.zeros((3, 10), dtype=int), gnd)
    with pytest.raises(DeepretError, match=r"\(10,\)"):
        compute_map(np.zeros(10, dtype=int), gnd)
    with pytest.raises(DeepretError, match="dtype float"):
        compute_map(np.zeros((10, 3)), gnd)
    with pytest.raises(DeepretError, match="2-D"):
        rank(np.zeros(4))
    with pytest.raises(DeepretError, match="'ok'"):
        compute_map(np.zeros((10, 1), dtype=int), [{"easy": [0], "hard": [], "junk": []}])


# --- protocols ------------------------------------------------------------------------------------

REVISITED = [{"easy": [0, 1], "hard": [2], "junk": [3]}, {"easy": [], "hard": [4], "junk": []}]


def test_protocol_construction_synthetic():
    assert protocols_of([{"ok": [1], "junk": []}]) == ["old"]
    assert protocols_of(REVISITED) == ["easy", "medium", "hard"]
    as_lists = lambda g: [{k: sorted(v.tolist()) for k, v in e.items()} for e in g]  # noqa: E731
    assert as_lists(protocol_gnd(REVISITED, "easy")) == [
        {"ok": [0, 1], "junk": [2, 3]},
        {"ok": [], "junk": [4]},
    ]
    assert as_lists(protocol_gnd(REVISITED, "medium")) == [
        {"ok": [0, 1, 2], "junk": [3]},
        {"ok": [4], "junk": []},
    ]
    assert as_lists(protocol_gnd(REVISITED, "hard")) == [
        {"ok": [2], "junk": [0, 1, 3]},
        {"ok": [4], "junk": []},
    ]
    with pytest.raises(DeepretError, match="'old'.*easy"):
        protocol_gnd(REVISITED, "old")
    with pytest.raises(DeepretError, match="'medium'"):
        protocol_gnd([{"ok": [1]}], "medium")
    with pytest.raises(DeepretError, match="keys"):
        protocols_of([{"positives": [1]}])


def test_label_results():
    assert label_results([0, 5, 3], {"ok": [0], "junk": [3]}) == ["positive", "negative", "junk"]
    # revisited: positives easy+hard, junk junk
    assert label_results(np.array([3, 2, 9, 0]), REVISITED[0]) == [
        "junk",
        "positive",
        "negative",
        "positive",
    ]
    assert label_results([2, 0], REVISITED[0], protocol="easy") == ["junk", "positive"]


# --- reporting ------------------------------------------------------------------------------------


def test_results_to_json_and_table():
    ranks = np.tile(np.arange(5)[:, None], (1, 2))
    results = evaluate(ranks, REVISITED)
    assert set(results) == {"easy", "medium", "hard"}
    assert isinstance(results["easy"], EvalResult)
    out = results_to_json(results, qimlist=["q0", "q1"])
    text = json.dumps(out, allow_nan=False)  # nan became null
    assert out["queries"] == ["q0", "q1"]
    easy = out["protocols"]["easy"]
    assert easy["AP"][0] == pytest.approx(100.0) and easy["AP"][1] is None
    assert easy["mAP"] == pytest.approx(100.0) and set(easy["mP@k"]) == {"1", "5", "10"}
    assert json.loads(text) == out

    table = format_table(results).splitlines()
    assert table[0].split() == ["protocol", "mAP", "mP@1", "mP@5", "mP@10"]
    assert [line.split()[0] for line in table[1:]] == ["easy", "medium", "hard"]
    assert table[1].split()[1] == "100.00"


# --- official ground truth ------------------------------------------------------------------------


def perfect_ranks(pgnd: list[dict], n_db: int, junk_first: bool = False) -> np.ndarray:
    """Per query: positives, then junk, then the rest (or junk, positives, rest)."""
    cols = []
    for e in pgnd:
        head = [e["junk"], e["ok"]] if junk_first else [e["ok"], e["junk"]]
        rest = np.setdiff1d(np.arange(n_db), np.concatenate(head))
        cols.append(np.concatenate([*head, rest]))
    return np.stack(cols, axis=1)


def expected_random_ap(n_pos: int, n_db: int) -> float:
    """Exact E[AP] of a uniformly random ranking of n_db (junk-free) images, n_pos positives.

    revisitop's AP = (AP_std + AP_0) / 2 with AP_std = mean_i i/R_i (R_i: 1-based rank of the
    i-th positive) and AP_0 = mean_i (i-1)/(R_i-1) (1 when R_1 = 1). For one positive at rank r
    the others are ahead with prob. (r-1)/(M-1), which gives
    E[AP_std] = (H_M + (n-1)/(M-1) (M - H_M)) / M  and  E[AP_0] = n / M.
    """
    n, m = n_pos, n_db
    h = float(np.sum(1.0 / np.arange(1, m + 1)))
    return ((h + (n - 1) / (m - 1) * (m - h)) / m + n / m) / 2


@pytest.mark.parametrize("name", DATASETS)
def test_official_gnd_perfect_reversed_random(name):
    data = load_gnd(name)
    gnd, n_db = data["gnd"], len(data["imlist"])
    rng = np.random.default_rng(0)
    for protocol in protocols_of(gnd):
        pgnd = protocol_gnd(gnd, protocol)
        perfect = perfect_ranks(pgnd, n_db)
        r = evaluate(perfect, gnd, [protocol])[protocol]
        assert r.map == pytest.approx(100.0), protocol
        assert r.mp_at_k == pytest.approx({1: 100.0, 5: 100.0, 10: 100.0}), protocol
        # junk anywhere is ignored: junk first, then positives still scores 100
        assert evaluate(perfect_ranks(pgnd, n_db, junk_first=True), gnd, [protocol])[
            protocol
        ].map == pytest.approx(100.0)
        # positives last
        reversed_map = evaluate(perfect[::-1], gnd, [protocol])[protocol].map
        assert reversed_map < 5.0, (protocol, reversed_map)
        assert_same_as_reference(perfect[::-1].copy(), pgnd)

        if n_db < 1000:  # too few queries and images for a tight random estimate
            continue
        # five random rankings per query: mAP within 5% of the exact expectation
        random_ranks = [np.stack([rng.permutation(n_db) for _ in gnd], 1) for _ in range(5)]
        maps = [evaluate(r, gnd, [protocol])[protocol].map for r in random_ranks]
        expected = 100 * np.mean(
            [expected_random_ap(len(e["ok"]), n_db - len(e["junk"])) for e in pgnd if len(e["ok"])]
        )
        assert np.mean(maps) == pytest.approx(expected, rel=0.05), protocol


def test_official_random_ranking_matches_reference():
    data = load_gnd("roxford5k")
    gnd, n_db = data["gnd"], len(data["imlist"])
    ranks = np.stack([np.random.default_rng(q).permutation(n_db) for q in range(len(gnd))], 1)
    for protocol in protocols_of(gnd):
        assert_same_as_reference(ranks, protocol_gnd(gnd, protocol))


def test_roxford5k_protocol_construction():
    gnd = load_gnd("roxford5k")["gnd"]
    assert len(gnd) == 70
    easy, medium, hard = (protocol_gnd(gnd, p) for p in ("easy", "medium", "hard"))
    for q, e in enumerate(gnd):
        assert set(easy[q]["ok"]) == set(e["easy"])
        assert set(easy[q]["junk"]) == set(e["junk"]) | set(e["hard"])
        assert set(medium[q]["ok"]) == set(e["easy"]) | set(e["hard"])
        assert set(medium[q]["junk"]) == set(e["junk"])
        assert set(hard[q]["ok"]) == set(e["hard"])
        assert set(hard[q]["junk"]) == set(e["junk"]) | set(e["easy"])
    # queries 11 and 66 have no easy positives: nan AP under Easy, left out of the mean
    ranks = perfect_ranks(medium, len(load_gnd("roxford5k")["imlist"]))
    res = evaluate(ranks, gnd)
    assert np.flatnonzero(np.isnan(res["easy"].aps)).tolist() == [11, 66]
    assert not np.isnan(res["medium"].aps).any() and not np.isnan(res["hard"].aps).any()
    # medium-perfect (easy and hard mixed first) is perfect for all three protocols
    assert [res[p].map for p in ("easy", "medium", "hard")] == pytest.approx([100.0] * 3)
