"""Tests for the t-SNE map: landmarks from the ground truth, the embedding, the figure."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

from deepret.datasets import load_benchmark
from deepret.errors import DeepretError
from deepret.features import Features
from deepret.viz.tsne import UNLABELED_COLOUR, embed_tsne, image_landmarks, palette, tsne_figure, tsne_plot

OXFORD = {"all_souls", "ashmolean", "balliol", "bodleian", "christ_church", "cornmarket", "hertford",
          "keble", "magdalen", "pitt_rivers", "radcliffe_camera"}


def count_colour(image: Path, colour, tol: int = 12, plot_only: bool = False) -> int:
    """Pixels of `colour` (0-1 floats); plot_only: in the scatter area, away from any text."""
    rgb = np.array(colour[:3]) * 255
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    if plot_only:
        h, w = pixels.shape[:2]
        pixels = pixels[int(0.1 * h):int(0.96 * h), int(0.03 * w):int(0.7 * w)]
    return int((np.abs(pixels - rgb).max(axis=-1) <= tol).sum())


def positives(bench, keys, queries=None) -> set[int]:
    qs = range(len(bench.gnd)) if queries is None else queries
    return {int(i) for q in qs for k in keys for i in bench.gnd[q][k]}


def test_image_landmarks_oxford5k_mini(data_root):
    bench = load_benchmark("oxford5k-mini", data_root)
    labels = image_landmarks(bench)
    assert len(labels) == len(bench.imlist)
    assert labels.count(None) == len(bench.imlist) - len(positives(bench, ["ok"]))
    for name, lab in zip(bench.imlist, labels):
        if name.startswith("all_souls_"):
            assert lab == "all_souls"
    assert set(labels) - {None} == OXFORD
    # an image named after no landmark takes its queries' landmark
    assert labels[bench.imlist.index("oxford_002985")] == "all_souls"


def official(tmp_path: Path, name: str):
    """An official gnd pickle without its images: a root with a symlink and one dummy jpg."""
    gnd = require_data(name, f"gnd_{name}.pkl")
    (tmp_path / name / "jpg").mkdir(parents=True)
    (tmp_path / name / "jpg" / "x.jpg").write_bytes(b"x")
    (tmp_path / name / f"gnd_{name}.pkl").symlink_to(gnd)
    return load_benchmark(name, tmp_path, check_images=False)


def test_image_landmarks_roxford5k_easy_and_hard(tmp_path):
    bench = official(tmp_path, "roxford5k")
    labels = image_landmarks(bench)
    assert len(labels) == 4993
    assert labels.count(None) == 4993 - len(positives(bench, ["easy", "hard"]))
    only_hard = positives(bench, ["hard"]) - positives(bench, ["easy"])
    only_junk = positives(bench, ["junk"]) - positives(bench, ["easy", "hard"])
    assert only_hard and all(labels[i] is not None for i in only_hard)
    assert only_junk and all(labels[i] is None for i in only_junk)
    # query images named "oxford_..." or after a neighbour get their landmark's name
    assert set(labels) - {None} == OXFORD
    queries = bench.query_landmarks
    assert queries[2] == "all_souls" and queries[54] == "radcliffe_camera"
    assert queries[55:] == [x for x in ("all_souls", "ashmolean", "christ_church", "hertford",
                                        "radcliffe_camera") for _ in range(3)]
    # positives of all_souls queries only are all_souls, whatever their file name
    souls = [q for q, lab in enumerate(queries) if lab == "all_souls"]
    others = [q for q in range(len(queries)) if q not in souls]
    only_souls = positives(bench, ["easy", "hard"], souls) - positives(bench, ["easy", "hard"], others)
    assert len(only_souls) > 50 and {labels[i] for i in only_souls} == {"all_souls"}
    assert any(re.match(r"oxford_\d+$", bench.imlist[i]) for i in only_souls)


def blobs(n_per: int = 25, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, dim)) * 10
    y = np.repeat(np.arange(3), n_per)
    return (centres[y] + rng.standard_normal((len(y), dim))).astype(np.float32), y


def test_embed_tsne_deterministic_and_keeps_clusters():
    x, y = blobs()
    a, b = embed_tsne(x, seed=0), embed_tsne(x, seed=0)
    assert a.shape == (75, 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.allclose(a, embed_tsne(x, seed=1), atol=1e-3)
    d = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    knn = np.argsort(d, axis=1)[:, :5]
    assert (y[knn] == y[:, None]).mean() > 0.95


def test_embed_tsne_small_and_bad_inputs():
    x, _ = blobs(n_per=2, dim=8)
    assert embed_tsne(x[:5], perplexity=30).shape == (5, 2)  # perplexity lowered below N
    assert embed_tsne(x[:1]).shape == (1, 2) and embed_tsne(x[:0]).shape == (0, 2)
    with pytest.raises(DeepretError, match="NaN"):
        embed_tsne(np.full((4, 3), np.nan))
    with pytest.raises(DeepretError, match="shape"):
        embed_tsne(np.zeros(5))


def test_palette_has_no_grey():
    cols = palette(12)
    assert len(set(cols)) == 12
    assert all(max(c) - min(c) > 0.08 for c in cols)


def test_tsne_figure_colours_and_unlabeled(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((60, 2)) + np.repeat(np.array([[0, 0], [8, 0], [0, 8], [8, 8]]), 15, axis=0)
    labels = ["a"] * 15 + ["b"] * 15 + ["c"] * 15 + [None] * 15
    with_grey = tsne_figure(pts, labels, tmp_path / "figs" / "u.png", "with", show_unlabeled=True)
    without = tsne_figure(pts, labels, tmp_path / "figs" / "l.png", "without", show_unlabeled=False)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["l.png", "u.png"]  # no temp files
    for out in (with_grey, without):
        with Image.open(out) as im:
            assert im.format == "PNG"
        for colour in palette(3):  # markers and legend entries
            assert count_colour(out, colour) > 100
    assert count_colour(with_grey, UNLABELED_COLOUR, plot_only=True) > 50
    assert count_colour(without, UNLABELED_COLOUR, plot_only=True) <= 3  # text is antialiased grey
    with pytest.raises(DeepretError, match="labels"):
        tsne_figure(pts, labels[:-1], tmp_path / "x.png", "bad")


def test_tsne_plot_on_oxford5k_mini(data_root, tmp_path, monkeypatch):
    import deepret.viz.tsne

    bench = load_benchmark("oxford5k-mini", data_root)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((len(bench.imlist), 32)).astype(np.float32)
    # the meta that benchmark_features writes: the network's meta under "model"
    feats = Features(db, db[:3], bench.imlist, bench.qimlist, {"model": {"name": "random-gem"}, "dataset": bench.name})
    titles = []
    real = deepret.viz.tsne.tsne_figure
    monkeypatch.setattr(deepret.viz.tsne, "tsne_figure", lambda *a, **k: titles.append(a[3]) or real(*a, **k))
    out = tsne_plot(feats, bench, tmp_path / "tsne.png", seed=0)
    assert out.exists() and count_colour(out, palette(11)[10]) > 50
    assert titles[0].endswith("random-gem")
    bad = Features(db[:10], db[:3], bench.imlist[:10], bench.qimlist, {})
    with pytest.raises(DeepretError, match="extract the features for oxford5k-mini"):
        tsne_plot(bad, bench, tmp_path / "bad.png")
