"""Robustness study: the query transforms, and a small real run whose untransformed queries match
the pipeline's own query descriptors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deepret.datasets import load_benchmark
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.pipeline import RunOptions, benchmark_features
from deepret.robustness import (
    TRANSFORMS,
    parse_transforms,
    robustness_study,
    transformed_images,
    transformed_queries,
    write_robustness_report,
)


def test_transforms_change_the_image_as_named():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8))
    a = np.asarray(im)
    assert np.array_equal(np.asarray(TRANSFORMS["flip"](im)), a[:, ::-1])
    assert np.array_equal(np.asarray(TRANSFORMS["rotate 180"](im)), a[::-1, ::-1])
    assert TRANSFORMS["rotate 90"](im).size == (48, 64)
    assert TRANSFORMS["rotate 10"](im).size == (64, 48)
    assert [TRANSFORMS[f"downscale 1/{f}"](im).size for f in (2, 4, 8)] == [(32, 24), (16, 12), (8, 6)]
    errors = [np.abs(np.asarray(TRANSFORMS[f"jpeg {q}"](im), dtype=float) - a).mean() for q in (90, 50, 10)]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_unknown_transform_names_the_valid_ones():
    assert parse_transforms(None) == list(TRANSFORMS)
    with pytest.raises(DeepretError, match="rotate 90"):
        parse_transforms("flip,rotate 45")


def test_small_run_on_oxford5k_mini(data_root, lite0, tmp_path):
    bench = load_benchmark("oxford5k-mini", data_root)
    opts = RunOptions(ExtractSettings(size=96), progress=False, workers=0)
    report = robustness_study(lite0, bench, opts, ["original", "rotate 180"])
    single = report["conditions"]["single-scale"]["results"]
    # the untransformed queries go through the same crop and resize as the pipeline's: the same mAP
    features = benchmark_features(lite0, bench, opts)[0]
    from deepret.pipeline import evaluate_features
    assert single["original"]["old"]["mAP"] == pytest.approx(evaluate_features(features, bench)["old"].map, abs=1e-3)
    assert single["rotate 180"]["old"]["mAP"] < single["original"]["old"]["mAP"]
    assert len(single["original"]["old"]["AP"]) == len(bench.qimlist)
    assert report["conditions"]["multi-scale + flip"]["settings"]["scales"] == [1.0, 0.707, 1.414]
    paths = write_robustness_report(report, tmp_path)
    assert json.loads(paths[0].read_text()) == report  # the record is what the JSON file gives back
    assert report["crop_queries"] is True
    assert "| rotate 180 |" in paths[1].read_text()
    with Image.open(paths[2]) as im:
        assert im.width > 500


@pytest.mark.parametrize("crop", [True, False])
def test_queries_are_cropped_only_when_asked(data_root, crop):
    from deepret.imageio import image_size

    bench = load_benchmark("oxford5k-mini", data_root)
    opts = RunOptions(ExtractSettings(size=96), crop_queries=crop, progress=False, workers=0)
    seen = [im.size for im in transformed_images(bench, "original", opts)]
    paths = [bench.query_path(q) for q in range(len(bench.qimlist))]
    whole = [image_size(p) for p in paths]
    cropped = [image_size(p, bench.query_bbx(q)) for q, p in enumerate(paths)]
    assert seen == (cropped if crop else whole)
    assert cropped != whole  # the boxes do crop: the two cases differ


def test_in_memory_queries_give_the_descriptors_of_their_lossless_files(data_root, lite0, tmp_path):
    """The transformed queries are described in memory: the same vectors as once through PNG files."""
    from deepret.extract import extract

    bench = load_benchmark("oxford5k-mini", data_root)
    opts = RunOptions(ExtractSettings(size=96, precision="fp32"), progress=False, workers=0)
    images = transformed_images(bench, "rotate 90", opts)[:4]
    for q, im in enumerate(images):
        im.save(tmp_path / f"{q}.png", compress_level=1)
    got = transformed_queries(lite0, images, "rotate 90", opts.settings, opts)
    files = extract(lite0, [tmp_path / f"{q}.png" for q in range(4)], settings=opts.settings, workers=0, progress=False)
    np.testing.assert_array_equal(got, files.vectors)
