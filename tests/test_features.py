"""The feature cache: keyed on everything that changes a descriptor; --no-cache and validations write nothing."""
from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import require_data
from PIL import Image

import deepret.features
import deepret.pipeline
from deepret.datasets import load_benchmark
from deepret.extract import ExtractSettings
from deepret.models import create_model
from deepret.pipeline import RunOptions, benchmark_features

NAMES = ["all_souls_000013", "all_souls_000026", "ashmolean_000000"]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("resnet18-gem", weights="random")


def make_bench(root, box=(10.0, 10.0, 120.0, 100.0)):
    """A 3-image revisitop benchmark of small real photos under root/tiny (query 0 = image 0)."""
    src = require_data("oxford5k-mini", "jpg")
    jpg = root / "tiny" / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        with Image.open(src / f"{name}.jpg") as im:
            im.convert("RGB").resize((160, 120)).save(jpg / f"{name}.jpg", quality=90)
    gnd = {"imlist": NAMES, "qimlist": [NAMES[0]], "gnd": [{"bbx": list(box), "ok": [0, 1], "junk": []}]}
    (root / "tiny" / "gnd_tiny.pkl").write_bytes(pickle.dumps(gnd))
    return load_benchmark("tiny", root)


def features(net, bench, tmp_path, **kw):
    opts = RunOptions(ExtractSettings(size=64), cache_dir=tmp_path / "cache", workers=0, progress=False)
    for k, v in kw.items():
        setattr(opts, k, v)
    return benchmark_features(net, bench, opts)


def test_every_input_of_a_descriptor_is_in_the_cache_key(net, tmp_path, monkeypatch):
    bench = make_bench(tmp_path / "a")
    f0, path0, cached = features(net, bench, tmp_path)
    assert not cached and path0.is_file()
    again, path, cached = features(net, bench, tmp_path)
    assert cached and path == path0 and np.array_equal(again.db, f0.db)

    # another copy of the dataset under another root, byte for byte the same: its own entry
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)
    _, path_b, cached = features(net, load_benchmark("tiny", copy), tmp_path)
    assert not cached and path_b != path0

    # a replaced photo (other content, size and mtime): new descriptors for it
    photo = bench.image_path(1)
    with Image.open(bench.image_path(2)) as im:
        im.save(photo, quality=70)
    f1, path1, cached = features(net, bench, tmp_path)
    assert not cached and path1 != path0
    assert not np.allclose(f1.db[1], f0.db[1]) and np.allclose(f1.db[0], f0.db[0], atol=1e-6)

    # the same bytes touched to another mtime: extracted again (stat changed)
    os.utime(photo, ns=(1, 10**18))
    _, path2, cached = features(net, bench, tmp_path)
    assert not cached and path2 not in (path0, path1)

    # an edited query box: a new query descriptor; without cropping the box does not matter
    edited = make_bench(tmp_path / "a", box=(40.0, 20.0, 150.0, 110.0))
    os.utime(photo, ns=(1, 10**18))
    f3, path3, cached = features(net, edited, tmp_path)
    assert not cached and not np.allclose(f3.queries, f1.queries)
    _, p_nocrop1, _ = features(net, bench, tmp_path, crop_queries=False)
    _, p_nocrop2, cached = features(net, edited, tmp_path, crop_queries=False)
    assert p_nocrop1 == p_nocrop2 and cached and p_nocrop1 != path3

    # a new version of the preprocessing code: nothing of the old one is served
    monkeypatch.setattr(deepret.features, "PREPROCESSING_VERSION", deepret.features.PREPROCESSING_VERSION + 1)
    _, path4, cached = features(net, edited, tmp_path)
    assert not cached and path4 != path3


def test_no_cache_neither_reads_nor_writes(net, tmp_path, monkeypatch):
    bench = make_bench(tmp_path)
    f, path, cached = features(net, bench, tmp_path, use_cache=False)
    assert path is None and not cached and f.db.shape == (3, net.dim)
    assert not (tmp_path / "cache").exists()


def test_default_size_comes_from_the_network(net, tmp_path, monkeypatch):
    bench = make_bench(tmp_path)
    monkeypatch.setitem(net.meta["input"], "default_size", 64)
    f_default, path_default, _ = features(net, bench, tmp_path, settings=ExtractSettings())
    assert f_default.meta["settings"]["size"] == 64
    _, path_explicit, cached = features(net, bench, tmp_path, settings=ExtractSettings(size=64))
    assert cached and path_explicit == path_default  # size None and the same size given: one entry


def test_training_validation_adds_no_cache_file(net, tmp_path):
    from deepret.features import default_cache_dir
    from deepret.train.runner import Run, train_config

    make_bench(tmp_path / "data")
    cfg = train_config("rank", tmp_path / "run", epochs=1, val="tiny", val_root=tmp_path / "data", val_size=64,
                       progress=False)
    results = Run(cfg, "rank").validate(net, 0)
    assert set(results) == {"old"} and 0 <= results["old"] <= 100
    assert not list(default_cache_dir().rglob("*.npz"))
