"""Tests for the top-K figure."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

from deepret.errors import DeepretError
from deepret.evaluate import label_results
from deepret.viz import topk_figure
from deepret.viz.topk import BBX_COLOUR, BORDER_COLOURS

BLUE = (0, 0, 255)


def flat_images(folder: Path, n: int) -> list[Path]:
    """n flat blue PNGs of varied sizes, so borders are the only green/red/grey."""
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (120 + 20 * i, 160 - 10 * i), BLUE).save(path)
        paths.append(path)
    return paths


def count_colour(image: Path, colour: tuple[int, int, int], tol: int = 12) -> int:
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    return int((np.abs(pixels - colour).max(axis=-1) <= tol).sum())


def test_topk_figure_draws_coloured_borders(tmp_path):
    query, *results = flat_images(tmp_path, 7)
    labels = ["positive", "negative", "junk", "positive", "negative", "positive"]
    out = topk_figure(
        query, [10, 10, 100, 120], results, labels, tmp_path / "figs" / "q.png",
        "query img0 — AP 50.0%", thumb=128, scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    )
    assert out == tmp_path / "figs" / "q.png" and out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["q.png"]  # no temp file left behind
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    # 6 results wrap onto two rows of at most 5, right of the query: wider than tall
    assert 6 * 128 <= w <= 6 * 250 and 2 * 128 <= h <= 3 * 250

    # a border is >= 4 px wide all round a >= 80 px thumbnail: hundreds of pixels each
    n_pos, n_neg, n_junk = (count_colour(out, BORDER_COLOURS[k]) for k in ("positive", "negative", "junk"))
    assert count_colour(out, BORDER_COLOURS["result"]) == 0  # only for results without ground truth
    assert n_pos > 500 and n_neg > 500 and n_junk > 300
    assert n_pos > n_neg > n_junk  # 3, 2 and 1 results of the same size range
    assert count_colour(out, BBX_COLOUR) > 100  # the query's bbx rectangle
    assert count_colour(out, BLUE) > 6 * 80 * 80


def test_topk_figure_without_bbx_or_scores(tmp_path):
    query, result = flat_images(tmp_path, 2)
    out = topk_figure(query, None, [result], ["junk"], tmp_path / "one.png", "one result", thumb=64)
    with Image.open(out) as im:
        assert im.size[0] > 2 * 64
    assert count_colour(out, BBX_COLOUR) == 0


def test_missing_image_names_the_file(tmp_path):
    query, result = flat_images(tmp_path, 2)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DeepretError, match="nope.jpg"):
        topk_figure(query, None, [result, missing], ["positive", "junk"], tmp_path / "x.png", "t")
    with pytest.raises(DeepretError, match="nope.jpg"):
        topk_figure(missing, None, [result], ["positive"], tmp_path / "x.png", "t")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DeepretError, match="bad.jpg"):
        topk_figure(tmp_path / "bad.jpg", None, [result], ["positive"], tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_bad_labels(tmp_path):
    query, result = flat_images(tmp_path, 2)
    with pytest.raises(DeepretError, match="unknown result labels.*'good'"):
        topk_figure(query, None, [result], ["good"], tmp_path / "x.png", "t")
    with pytest.raises(DeepretError, match="1 result images but 2 labels"):
        topk_figure(query, None, [result], ["positive", "junk"], tmp_path / "x.png", "t")


def test_real_figure_oxford5k_mini(tmp_path):
    root = require_data("oxford5k-mini")
    with open(root / "gnd_oxford5k-mini.pkl", "rb") as f:
        data = pickle.load(f)
    q = data["qimlist"].index("all_souls_000013")
    entry = data["gnd"][q]
    others = [i for i in range(len(data["imlist"])) if i not in entry["ok"]]
    ranked = entry["ok"][:3] + others[:2] + entry["ok"][3:4]
    labels = label_results(ranked, entry)
    assert labels == ["positive"] * 3 + ["negative"] * 2 + ["positive"]
    jpg = lambda name: root / "jpg" / f"{name}.jpg"  # noqa: E731
    out = topk_figure(
        jpg(data["qimlist"][q]), entry["bbx"], [jpg(data["imlist"][i]) for i in ranked], labels,
        tmp_path / "all_souls_000013.png", "query all_souls_000013", thumb=96,
    )
    assert count_colour(out, BORDER_COLOURS["positive"], tol=4) > 300
    assert count_colour(out, BORDER_COLOURS["negative"], tol=4) > 200
