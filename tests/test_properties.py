"""Property tests (hypothesis) of the pure parts: AP/mAP against a brute force, batch planning, the
argparse types, re-ranking specs, ExtractSettings' dict form. Derandomized and bounded: a few seconds."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepret.argtypes import parse_box, parse_scales
from deepret.errors import DeepretError
from deepret.evaluate import average_precision, compute_map
from deepret.extract import ExtractSettings, plan_batches
from deepret.imageio import target_shape
from deepret.rerank import DEFAULTS, INTEGER_KEYS, STAGE_ORDER, parse_rerank

pytestmark = pytest.mark.fast

# the same examples on every run, none remembered between runs (no .hypothesis/ folder), no time limit
PROPERTY = settings(max_examples=150, derandomize=True, database=None, deadline=None)


# --- AP / mAP: revisitop's trapezoid, by brute force over the junk-free ranking --------------------


def brute_force_ap(ranking: list[int], positives: set[int], junk: set[int]) -> float:
    """Walk the ranking without its junk; each positive adds the area of one recall step under the
    precision curve, by the trapezoid between the precision just before it and just after it."""
    clean = [i for i in ranking if i not in junk]
    area, found = 0.0, 0
    for position, i in enumerate(clean):
        if i in positives:
            before = 1.0 if position == 0 else found / position
            found += 1
            after = found / (position + 1)
            area += (before + after) / 2 / len(positives)
    return area


def brute_force_precision_at(ranking: list[int], positives: set[int], junk: set[int], k: int) -> float:
    """revisitop's P@k: k shrinks to the rank of the last positive found when that is above k."""
    ranks = [r for r, i in enumerate((i for i in ranking if i not in junk), 1) if i in positives]
    if not ranks:
        return 0.0
    kq = min(max(ranks), k)
    return sum(r <= kq for r in ranks) / kq


@st.composite
def retrieval_cases(draw):
    """(ranks (depth, n_q), gnd): random permutations per query, maybe truncated; each database item is
    a positive, junk or a negative of each query (some queries without positives)."""
    n_db = draw(st.integers(1, 25))
    n_q = draw(st.integers(1, 4))
    depth = draw(st.integers(1, n_db))
    columns, gnd = [], []
    for _ in range(n_q):
        columns.append(draw(st.permutations(range(n_db)))[:depth])
        labels = draw(st.lists(st.sampled_from("pjn"), min_size=n_db, max_size=n_db))
        gnd.append({"ok": [i for i, x in enumerate(labels) if x == "p"],
                    "junk": [i for i, x in enumerate(labels) if x == "j"]})
    return np.array(columns, dtype=np.int64).T.reshape(depth, n_q), gnd


@PROPERTY
@given(retrieval_cases())
def test_map_matches_the_brute_force_trapezoid(case):
    ranks, gnd = case
    kappas = (1, 3, 5)
    mean_ap, aps, mpr, prs = compute_map(ranks, gnd, kappas)
    expected = []
    for q, entry in enumerate(gnd):
        ranking, positives, junk = ranks[:, q].tolist(), set(entry["ok"]), set(entry["junk"])
        if not positives:
            assert math.isnan(aps[q]) and np.isnan(prs[q]).all()
            continue
        expected.append(brute_force_ap(ranking, positives, junk))
        assert aps[q] == pytest.approx(expected[-1], abs=1e-12)
        assert 0.0 <= aps[q] <= 1.0 + 1e-12
        for j, k in enumerate(kappas):
            assert prs[q, j] == pytest.approx(brute_force_precision_at(ranking, positives, junk, k), abs=1e-12)
    if expected:
        assert mean_ap == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    else:
        assert math.isnan(mean_ap) and np.isnan(mpr).all()


@PROPERTY
@given(st.integers(1, 20), st.integers(0, 20), st.data())
def test_ap_is_one_exactly_when_the_positives_come_first(n_pos, n_neg, data):
    ranking = data.draw(st.permutations(range(n_pos + n_neg)))
    positions = [r for r, i in enumerate(ranking) if i < n_pos]  # items 0..n_pos-1 are the positives
    ap = average_precision(np.array(positions), n_pos)
    assert (ap == pytest.approx(1.0)) == (positions == list(range(n_pos)))
    assert ap == pytest.approx(brute_force_ap(ranking, set(range(n_pos)), set()), abs=1e-12)


# --- plan_batches -----------------------------------------------------------------------------------


@PROPERTY
@given(sizes=st.lists(st.tuples(st.integers(8, 3000), st.integers(8, 3000)), min_size=0, max_size=40),
       longest=st.integers(16, 1024), round_to=st.sampled_from([1, 8, 16, 32]),
       max_pixels=st.integers(1, 4 * 1024 * 1024), fixed=st.none() | st.integers(16, 512),
       upscale=st.booleans(), scale=st.sampled_from([1.0, 0.707, 1.414, 0.5, 2.0]))
def test_plan_batches(sizes, longest, round_to, max_pixels, fixed, upscale, scale):
    batches = plan_batches(sizes, longest, round_to, max_pixels, fixed=fixed, upscale=upscale, scale=scale)
    indices = [i for batch in batches for i, _, _ in batch]
    assert sorted(indices) == list(range(len(sizes)))  # every image exactly once
    per_shape: dict[tuple[int, int], list[int]] = {}
    for batch in batches:
        assert batch, "an empty batch"
        shapes = {(h, w) for _, h, w in batch}
        assert len(shapes) == 1  # one tensor shape per batch
        (h, w), = shapes
        assert len(batch) == 1 or len(batch) * h * w <= max_pixels  # pixel bound, one image at least
        per_shape.setdefault((h, w), []).append(len(batch))
        for i, _, _ in batch:
            width, height = sizes[i]
            if fixed:
                assert (h, w) == (fixed, fixed)
                continue
            side = int(round((longest if upscale else min(longest, max(width, height))) * scale))
            assert (h, w) == target_shape(width, height, side, round_to)
            long_out, short_out = (w, h) if width >= height else (h, w)  # orientation kept
            assert long_out == side
            assert short_out % round_to == 0
            exact = min(width, height) * side / max(width, height)
            assert short_out == round_to or abs(short_out - exact) <= round_to / 2 + 1e-9
    for (h, w), counts in per_shape.items():  # no more batches than the bound needs
        per_batch = max(1, max_pixels // (h * w))
        assert len(counts) == math.ceil(sum(counts) / per_batch)


# --- argparse types ---------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)


@PROPERTY
@given(finite, finite, positive, positive)
def test_parse_box_round_trips(x1, y1, width, height):
    x2, y2 = x1 + width, y1 + height
    if x2 <= x1 or y2 <= y1:  # the sum rounded back onto x1 / y1
        return
    assert parse_box(",".join(map(repr, (x1, y1, x2, y2)))) == (x1, y1, x2, y2)


@PROPERTY
@given(st.lists(finite, min_size=0, max_size=6), st.sampled_from(["", "x", "1,,2", "a,b,c,d"]))
def test_parse_box_rejects_bad_boxes(values, junk):
    if len(values) == 4 and values[2] > values[0] and values[3] > values[1]:
        values = [values[2], values[1], values[0], values[3]]  # x2 <= x1 now
    for text in (",".join(map(repr, values)), junk):
        with pytest.raises(argparse.ArgumentTypeError, match=r"^--box '.*': give x1,y1,x2,y2"):
            parse_box(text)


@PROPERTY
@given(st.lists(positive, min_size=1, max_size=5))
def test_parse_scales_round_trips(scales):
    assert parse_scales(",".join(map(repr, scales))) == tuple(scales)


@PROPERTY
@given(st.lists(positive, min_size=0, max_size=4), st.floats(-1e6, 0.0), st.integers(0, 4))
def test_parse_scales_rejects_non_positive_and_non_numbers(scales, bad, where):
    values = [repr(s) for s in scales]
    values.insert(min(where, len(values)), repr(bad))
    with pytest.raises(argparse.ArgumentTypeError, match="every scale must be a finite number > 0"):
        parse_scales(",".join(values))
    values[min(where, len(values) - 1)] = "one"
    with pytest.raises(argparse.ArgumentTypeError, match="give numbers separated by commas"):
        parse_scales(",".join(values))


# --- re-ranking specs -------------------------------------------------------------------------------

# numbers as one types them: at most five significant digits (the spec prints floats with %g)
typed_float = st.one_of(st.builds(lambda m, e: round(m / 10 ** e, e), st.integers(0, 99999), st.integers(0, 4)),
                        st.floats(0, 1e6, allow_nan=False, allow_infinity=False))  # all 17 digits: kept exactly


@st.composite
def rerank_specs(draw):
    """(spec text with random spacing and parameter subsets, the methods it means: (name, params))."""
    stages = {0: [], 1: [], 2: []}
    for name, stage in STAGE_ORDER.items():
        stages[stage].append(name)
    names = draw(st.lists(st.sampled_from(stages[0]), max_size=2)) + draw(
        st.lists(st.sampled_from(stages[1]), max_size=2)) + draw(st.lists(st.just("diffusion"), max_size=1))
    if not names:
        names = [draw(st.sampled_from(sorted(DEFAULTS)))]
    parts, methods = [], []
    for name in names:
        params = dict(DEFAULTS[name])
        given_keys = draw(st.lists(st.sampled_from(sorted(params)), unique=True))
        items = []
        for key in given_keys:
            if key in INTEGER_KEYS:
                value = draw(st.integers(1, 5000))
            elif name == "diffusion" and key == "alpha":
                value = draw(typed_float.filter(lambda v: v < 1))
            else:
                value = draw(typed_float)
            params[key] = value
            space = draw(st.sampled_from(["", " "]))
            items.append(f"{space}{key}{space}={space}{value}")
        parts.append(f"{name}:{','.join(items)}" if items else name)
        methods.append((name, params))
    return draw(st.sampled_from(["+", " + "])).join(parts), methods


@PROPERTY
@given(rerank_specs())
def test_a_rerank_spec_parses_back_to_the_same(case):
    text, expected = case
    reranker = parse_rerank(text)
    assert [(m.name, m.params) for m in reranker.methods] == expected
    again = parse_rerank(reranker.spec)
    assert again.spec == reranker.spec
    assert [(m.name, m.params) for m in again.methods] == expected


BAD_METHODS = {"bogus": "unknown re-ranking method 'bogus'", "qe:n=0": r"n=0 of 'qe' must be >= 1",
               "qe:m=1": "unknown parameter 'm'", "qe:n": "has no value", "qe:alpha=3": "unknown parameter 'alpha'",
               "diffusion:alpha=1": r"alpha=1 of 'diffusion' must be in \[0, 1\)"}


@PROPERTY
@given(rerank_specs(), st.sampled_from(sorted(BAD_METHODS)))
def test_a_bad_method_in_a_spec_is_refused(case, bad):
    text, _ = case
    with pytest.raises(DeepretError, match=BAD_METHODS[bad]):
        parse_rerank(f"{text}+{bad}")


# --- ExtractSettings.to_dict / from_dict ------------------------------------------------------------


extract_settings = st.builds(
    ExtractSettings,
    size=st.none() | st.integers(1, 4096),
    scales=st.lists(positive, min_size=1, max_size=4).map(tuple),
    flip=st.booleans(),
    round_to=st.integers(1, 64),
    precision=st.sampled_from(["auto", "fp32", "bf16", "fp16", "FP32", " bf16 "]),
    upscale=st.booleans(),
)


@PROPERTY
@given(extract_settings)
def test_extract_settings_round_trip_through_json(s):
    stored = s.to_dict()
    assert json.loads(json.dumps(stored)) == stored  # JSON-ready as it is
    assert ExtractSettings.from_dict(stored) == s
    assert ExtractSettings.from_dict(json.loads(json.dumps(stored))) == s
    older = {k: v for k, v in stored.items() if k != "upscale"}  # written before the field existed
    assert ExtractSettings.from_dict(older).upscale is True


@pytest.mark.parametrize("text", ["nan,0,1,1", "0,0,inf,1", "-inf,0,1,1", "0,0,1,nan"])
def test_parse_box_rejects_non_finite_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--box '.*': give x1,y1,x2,y2"):
        parse_box(text)


@pytest.mark.parametrize("text", ["nan", "1,inf", "0.5,nan"])
def test_parse_scales_rejects_non_finite_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError, match="every scale must be a finite number > 0"):
        parse_scales(text)
