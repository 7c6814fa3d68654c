"""A small real photo collection for the web-app tests: 7 photos of each of 5 Paris landmarks.

The photos are the first easy positives (official Revisited Paris ground truth) of one query per
landmark, copied into a temporary folder; the query photos themselves are not in the collection.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

from conftest import require_data

QUERIES = ("paris_eiffel_000266", "paris_defense_000056", "paris_invalides_000072", "paris_louvre_000081",
           "paris_moulinrouge_000868")
PER_LANDMARK = 7
SIZE = 256  # longest side for the index: small and fast


def benchmark() -> tuple[Path, dict]:
    root = require_data("rparis6k-mini")
    with open(root / "gnd_rparis6k-mini.pkl", "rb") as f:
        return root / "jpg", pickle.load(f)


def query(name: str = QUERIES[0]) -> tuple[Path, tuple[float, ...], set[str]]:
    """A query photo, its official box and the file names of all its positives (easy + hard)."""
    jpg, gnd = benchmark()
    q = gnd["gnd"][gnd["qimlist"].index(name)]
    positives = {f"{gnd['imlist'][i]}.jpg" for i in list(q["easy"]) + list(q["hard"])}
    return jpg / f"{name}.jpg", tuple(float(v) for v in q["bbx"]), positives


def make_collection(folder: Path) -> Path:
    """Copy PER_LANDMARK photos of each landmark into `folder`/<landmark>/ (copies: the collection must
    not hold symlinks that point out of it)."""
    jpg, gnd = benchmark()
    for name in QUERIES:
        q = gnd["gnd"][gnd["qimlist"].index(name)]
        landmark = name.split("_")[1]
        (folder / landmark).mkdir(parents=True, exist_ok=True)
        for i in list(q["easy"])[:PER_LANDMARK]:
            shutil.copy2(jpg / f"{gnd['imlist'][i]}.jpg", folder / landmark / f"{gnd['imlist'][i]}.jpg")
    return folder


def build(tmp: Path):
    """Build the index of a fresh collection under `tmp`; returns (index_dir, collection)."""
    from deepret.extract import ExtractSettings
    from deepret.index import build_index

    photos = make_collection(tmp / "photos")
    index_dir = tmp / "index"
    build_index(photos, index_dir, model="efficientnet_lite0-gem", settings=ExtractSettings(size=SIZE),
                progress=False).close()
    return index_dir, photos
