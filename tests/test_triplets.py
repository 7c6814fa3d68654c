"""Tests for the mined-tuples figure (reads a rank run's tuples.jsonl)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

from deepret.errors import DeepretError
from deepret.viz.topk import BORDER_COLOURS
from deepret.viz.triplets import read_tuples, triplets_figure

BLUE = (0, 0, 255)


def count_colour(image: Path, colour, tol: int = 12) -> int:
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    return int((np.abs(pixels - colour).max(axis=-1) <= tol).sum())


def write_run(folder: Path, paths: list, epochs=(1, 2), per_epoch: int = 3, n_neg: int = 2) -> Path:
    """A tuples.jsonl like the rank trainer's: query, positive, n_neg negatives per line."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in epochs:
        for t in range(per_epoch):
            ix = [(t + k) % len(paths) for k in range(2 + n_neg)]
            lines.append(json.dumps({
                "epoch": e, "query": ix[0], "positive": ix[1], "negatives": ix[2:],
                "d_positive": 0.5 + 0.01 * t, "d_negatives": [0.8 + 0.1 * k for k in range(n_neg)],
                "paths": [str(paths[i]) for i in ix], "classes": [f"c{i % 3}" for i in ix]}))
    path = folder / "tuples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def flat_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        out.append(folder / f"img{i}.jpg")
        Image.new("RGB", (140 + 10 * i, 120), BLUE).save(out[-1], quality=95)
    return out


def test_triplets_figure_borders(tmp_path):
    tuples = write_run(tmp_path / "run", flat_images(tmp_path / "imgs", 5))
    out = triplets_figure(tuples, tmp_path / "figs" / "t.png", n=2, thumb=96)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["t.png"]
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 4 * 96 <= w <= 4 * 160 and 2 * 96 <= h <= 2 * 200  # 2 rows of query, positive, 2 negatives
    n_pos = count_colour(out, BORDER_COLOURS["positive"])
    n_neg = count_colour(out, BORDER_COLOURS["negative"])
    assert n_pos > 500 and n_neg > 1.5 * n_pos  # two negatives per positive
    assert count_colour(out, BLUE, tol=30) > 8 * 60 * 60


def test_triplets_figure_epoch_choice_and_errors(tmp_path):
    tuples = write_run(tmp_path / "run", flat_images(tmp_path / "imgs", 4), epochs=(1, 2, 3))
    assert {r["epoch"] for r in read_tuples(tuples)} == {1, 2, 3}
    assert triplets_figure(tuples, tmp_path / "e1.png", epoch=1, n=10, thumb=48).exists()
    with pytest.raises(DeepretError, match=r"epoch 7 .* \[1, 2, 3\]"):
        triplets_figure(tuples, tmp_path / "e7.png", epoch=7)
    with pytest.raises(DeepretError, match="not found.*tuples.jsonl"):
        triplets_figure(tmp_path / "nowhere" / "tuples.jsonl", tmp_path / "x.png")
    empty = tmp_path / "empty" / "tuples.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    with pytest.raises(DeepretError, match="empty"):
        triplets_figure(empty, tmp_path / "x.png")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(DeepretError, match=r"broken.jsonl:1 lacks"):
        read_tuples(broken)
    gone = write_run(tmp_path / "gone", [tmp_path / "missing.jpg"] * 4, epochs=(1,))
    with pytest.raises(DeepretError, match="missing.jpg"):
        triplets_figure(gone, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_triplets_figure_relative_paths_from_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    flat_images(run / "imgs", 4)
    tuples = write_run(run, [Path("imgs") / f"img{i}.jpg" for i in range(4)], epochs=(1,))
    monkeypatch.chdir(tmp_path)  # the relative paths do not exist from here
    assert triplets_figure(tuples, tmp_path / "rel.png", thumb=48).exists()


def test_triplets_figure_real_photos(tmp_path):
    root = require_data("landmarks-mini")
    photos = {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}
    a, b, c = list(photos)[:3]
    paths = [photos[a][0], photos[a][1], photos[b][0], photos[c][0]]
    line = {"epoch": 1, "query": 0, "positive": 1, "negatives": [2, 3], "d_positive": 0.71,
            "d_negatives": [0.93, 1.02], "paths": [str(p) for p in paths], "classes": [a, a, b, c]}
    tuples = tmp_path / "run" / "tuples.jsonl"
    tuples.parent.mkdir()
    tuples.write_text(json.dumps(line) + "\n")
    out = triplets_figure(tuples, tmp_path / "real.png", thumb=128)
    assert count_colour(out, BORDER_COLOURS["positive"], tol=6) > 400
    assert count_colour(out, BORDER_COLOURS["negative"], tol=6) > 800
