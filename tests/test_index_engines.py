"""An index and the engines: --engine on search/update, int8 calibrated on a sample of the collection."""
import shutil

import numpy as np
import pytest
from conftest import require_data

from deepret.cli import main
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import Index, build_index

LITE0 = dict(model="efficientnet_lite0-gem", progress=False)


@pytest.fixture
def collection(tmp_path):
    folder = tmp_path / "photos"
    for landmark in sorted(require_data("landmarks-mini").iterdir())[:3]:
        (folder / landmark.name).mkdir(parents=True)
        for photo in sorted(landmark.glob("*.jpg"))[:2]:
            shutil.copy(photo, folder / landmark.name / photo.name)
    return folder


def test_an_fp32_index_is_searched_by_either_engine_alike(collection, tmp_path):
    build_index(collection, tmp_path / "ix", settings=ExtractSettings(size=128), **LITE0).close()
    query = sorted(collection.rglob("*.jpg"))[0]
    results = {}
    for engine in ("torch", "openvino"):
        with Index.open(tmp_path / "ix", engine=engine) as index:
            assert index.run_settings(index.load_model()).engine == engine
            results[engine] = index.search(query, k=6)
    assert [h.id for h in results["torch"].hits] == [h.id for h in results["openvino"].hits]
    np.testing.assert_allclose([h.score for h in results["torch"].hits],
                               [h.score for h in results["openvino"].hits], atol=1e-4)
    assert main(["index", "search", "--index", str(tmp_path / "ix"), str(query), "--engine", "torch", "--topk", "2"]) == 0


def test_int8_without_calibration_photos_samples_the_collection_and_records_it(collection, tmp_path):
    with build_index(collection, tmp_path / "ix", settings=ExtractSettings(size=128, precision="int8"), **LITE0) as index:
        listed = (tmp_path / "ix" / "calibration.txt").read_text().splitlines()
        assert sorted(listed) == sorted(str(p) for p in collection.rglob("*.jpg"))  # fewer than 64: all of them
        assert index.settings.calibration == str(tmp_path / "ix" / "calibration.txt")
        assert len(index.settings.calibration_id) == 16  # the engine's cache and the feature key name it
        run = index.run_settings(index.load_model())
        assert (run.engine, run.precision) == ("openvino", "int8")
        hit = index.search(sorted(collection.rglob("*.jpg"))[0], k=1).hits[0]
        assert hit.path == sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*.jpg"))[0]
    with Index.open(tmp_path / "ix", engine="torch") as index, pytest.raises(DeepretError, match="int8.*--engine auto or openvino"):
        index.run_settings(index.load_model())
    (collection / "new.jpg").write_bytes(sorted(collection.rglob("*.jpg"))[1].read_bytes())
    with Index.open(tmp_path / "ix") as index:  # new photos: the same int8 model, from its stored calibration
        assert index.update(progress=False).added == 1
        assert index.search(collection / "new.jpg", k=1).hits[0].score > 0.99
