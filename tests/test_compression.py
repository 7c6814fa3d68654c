"""Compression study: code sizes, mAP of exact search against the evaluator's own, skipped factories."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from deepret.compression import code_bytes, compression_study, default_factories, write_compression_report
from deepret.evaluate import evaluate
from deepret.search import similarities
from deepret.vectors import VectorIndex


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    labels = np.arange(n) % 4
    x = centres[labels] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_code_bytes_of_the_factories():
    assert [code_bytes(VectorIndex(f, 64)) for f in ("Flat", "SQfp16", "SQ8", "PQ8x4", "PQ16", "OPQ8,PQ8x4")] == \
        [256, 128, 64, 4, 16, 4]
    assert default_factories(40) == ["Flat", "SQfp16", "SQ8", "PQ8x4", "OPQ8,PQ8x4", "PQ8", "OPQ8,PQ8"]


def test_study_rows_report_files_and_skipped_factories(tmp_path):
    db, labels = clustered(40, 32, 0)
    queries, qlabels = clustered(8, 32, 1)
    train, _ = clustered(120, 32, 2)
    gnd = [{"ok": np.flatnonzero(labels == c), "junk": np.array([], dtype=int)} for c in qlabels]
    rows = compression_study(db, queries, gnd, train, ["Flat", "PQ8x4", "PQ8"], progress=False)
    flat, pq4, pq8 = rows
    assert flat.mAP["old"] == round(evaluate(similarities(db, queries), gnd)["old"].map, 2)
    assert pq4.code_bytes == 4 and pq4.skipped is None and 0 < pq4.mAP["old"] <= 100
    assert pq8.skipped and "256" in pq8.skipped and "120" in pq8.skipped and not pq8.mAP
    meta = {"dataset": "toy", "model": "none", "train_on": ["toy-train"], "train_vectors": len(train)}
    paths = write_compression_report(rows, meta, tmp_path / "out")
    assert [p.name for p in paths] == ["compression.json", "compression.md", "compression.png"]
    assert json.loads(paths[0].read_text())["rows"][1]["factory"] == "PQ8x4"
    table = paths[1].read_text()
    assert "| PQ8x4 | 4 | 32x |" in table and "skipped" in table
    with Image.open(paths[2]) as im:
        assert im.width > 300
