"""Loading revisitop benchmarks and converting the official ground-truth txt files."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import pytest
from conftest import require_data

from deepret.datasets import BUILTIN_DATASETS, Benchmark, convert_gt, load_benchmark, write_gnd
from deepret.datasets.sources import KNOWN_SHA256
from deepret.errors import DeepretError


@pytest.fixture
def data() -> Path:
    return require_data()


def _official(data: Path, name: str) -> dict:
    with open(data / name / f"gnd_{name}.pkl", "rb") as f:
        return pickle.load(f)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Root of a 3-image, 2-query benchmark `tiny` (image files need not be real JPEGs here)."""
    name = "tiny"
    folder = tmp_path / name
    (folder / "jpg").mkdir(parents=True)
    imlist = ["a_000001", "a_000002", "b_000001"]
    for n in imlist:
        (folder / "jpg" / f"{n}.jpg").write_bytes(b"x")
    gnd = [{"bbx": [1, 2, 3.5, 4], "ok": [1], "junk": []}, {"bbx": None, "ok": [], "junk": [0]}]
    write_gnd({"imlist": imlist, "qimlist": ["a_000001", "b_000001"], "gnd": gnd}, folder / f"gnd_{name}.pkl")
    return tmp_path


# --- load_benchmark on real data ------------------------------------------------------------


def test_load_oxford5k_mini(data: Path) -> None:
    b = load_benchmark("oxford5k-mini", data)
    assert isinstance(b, Benchmark)
    assert (len(b.imlist), len(b.qimlist), len(b.gnd)) == (54, 53, 53)
    assert all(b.image_path(i).is_file() for i in range(len(b.imlist)))
    assert all(b.query_path(q).is_file() for q in range(len(b.qimlist)))
    assert b.image_path(0) == data / "oxford5k-mini" / "jpg" / f"{b.imlist[0]}.jpg"
    assert b.protocols == ["old"]
    assert b.query_bbx(0) == (136.5, 34.1, 648.5, 955.7)
    assert b.landmark_of_query(0) == "all_souls"


def test_revisited_protocols_and_landmark_from_name(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "roxford5k"
    (folder / "jpg").mkdir(parents=True)
    (folder / "jpg" / "x.jpg").write_bytes(b"x")
    (folder / "gnd_roxford5k.pkl").symlink_to(data / "roxford5k" / "gnd_roxford5k.pkl")
    b = load_benchmark("roxford5k", tmp_path, check_images=False)
    assert b.protocols == ["easy", "medium", "hard"]
    assert (len(b.imlist), len(b.qimlist)) == (4993, 70)
    assert b.landmark_of_query(0) == "all_souls"
    # official pickles: no 'query' key and query images named after no landmark ("oxford_...")
    assert re.match(r"oxford_\d+$", b.qimlist[2]) and b.landmark_of_query(2) == "all_souls"
    assert b.landmark_of_query(54) == "radcliffe_camera"
    assert b.positives(0) == {int(i) for k in ("easy", "hard") for i in b.gnd[0][k]}
    assert b.query_path(69) == folder / "jpg" / f"{b.qimlist[69]}.jpg"
    with pytest.raises(DeepretError, match=r"roxford5k/jpg/.*\.jpg"):
        load_benchmark("roxford5k", tmp_path, check_images=True)


def test_tiny_benchmark_accessors(tiny: Path, tmp_path: Path) -> None:
    b = load_benchmark("tiny", tmp_path)
    assert b.query_bbx(0) == (1.0, 2.0, 3.5, 4.0)
    assert b.query_bbx(1) is None
    assert b.landmark_of_query(1) == "b"
    assert b.root == tmp_path and b.folder == tmp_path / "tiny"
    assert b.image_path(2) == tmp_path / "tiny" / "jpg" / "b_000001.jpg"


# --- converter --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,gt", [("oxford5k", "gt_files_170407"), ("paris6k", "gt_files_120310")])
def test_convert_equals_official_pickle(data: Path, tmp_path: Path, name: str, gt: str) -> None:
    official = _official(data, name)
    cfg = convert_gt(data / name / gt, official["imlist"])
    assert cfg == official
    assert list(cfg) == list(official)
    assert repr(cfg) == repr(official)  # same key order and number types (int vs float bbx)
    out = tmp_path / f"gnd_{name}.pkl"
    write_gnd(cfg, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == KNOWN_SHA256[out.name]  # byte-identical to the official file
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left


def test_convert_deduplicates_all_souls_000091(data: Path) -> None:
    gt = data / "oxford5k" / "gt_files_170407"
    lines = (gt / "all_souls_1_good.txt").read_text().split()
    assert lines.count("all_souls_000091") == 2  # the official file lists it twice
    official = _official(data, "oxford5k")
    cfg = convert_gt(gt, official["imlist"])
    i = official["imlist"].index("all_souls_000091")
    assert cfg["gnd"][0]["ok"].count(i) == 1
    assert cfg["qimlist"][0] == "all_souls_000013"  # oxc1_ prefix stripped
    assert cfg["gnd"][0]["bbx"] == [136.5, 34.1, 648.5, 955.7]


def _tiny_gt(gt: Path) -> None:
    gt.mkdir()
    (gt / "a_1_query.txt").write_text("oxc1_a_000001 10 20.5 30 40.000000\n")
    (gt / "a_1_good.txt").write_text("a_000002\na_000002\n")
    (gt / "a_1_ok.txt").write_text("a_000001\n")
    (gt / "a_1_junk.txt").write_text("\nb_000001\n")


def test_convert_imlist_from_file_and_folder(tiny: Path, tmp_path: Path) -> None:
    gt = tmp_path / "gt"
    _tiny_gt(gt)
    expected = {
        "qidx": [0],
        "gnd": [{"bbx": [10, 20.5, 30, 40], "ok": [0, 1], "junk": [2]}],
        "imlist": ["a_000001", "a_000002", "b_000001"],
        "qimlist": ["a_000001"],
    }
    listing = tmp_path / "imlist.txt"
    listing.write_text("a_000001.jpg\na_000002\nb_000001\n")
    assert convert_gt(gt, listing) == expected
    assert convert_gt(gt, str(tmp_path / "tiny" / "jpg")) == expected
    assert convert_gt(gt, ["b_000001", "a_000002", "a_000001"])["gnd"][0]["ok"] == [1, 2]


def test_convert_errors(tmp_path: Path) -> None:
    with pytest.raises(DeepretError, match="no \\*_query.txt files in .*empty"):
        (tmp_path / "empty").mkdir()
        convert_gt(tmp_path / "empty", ["a"])
    gt = tmp_path / "gt"
    _tiny_gt(gt)
    with pytest.raises(DeepretError, match=r"'b_000001' listed in .*a_1_junk\.txt"):
        convert_gt(gt, ["a_000001", "a_000002"])


# --- load_benchmark errors ----------------------------------------------------------------------


def test_error_missing_dataset_folder_says_what_download_fetches(tmp_path: Path) -> None:
    with pytest.raises(DeepretError) as e:
        load_benchmark("oxford5k", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "oxford5k") in msg
    assert f"deepret download oxford5k --root {tmp_path}" in msg and "oxbuild_images-v1.tgz" in msg
    assert "oxford5k" in BUILTIN_DATASETS


def test_error_missing_gnd(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny" / "gnd_tiny.pkl").unlink()
    with pytest.raises(DeepretError, match=r"tiny/gnd_tiny\.pkl not found"):
        load_benchmark("tiny", tmp_path)


def test_error_corrupt_gnd(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny" / "gnd_tiny.pkl"
    path.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(DeepretError, match="cannot read ground-truth file .*gnd_tiny.pkl"):
        load_benchmark("tiny", tmp_path)


def test_error_gnd_with_wrong_keys(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny" / "gnd_tiny.pkl"
    write_gnd({"imlist": [], "qimlist": ["a"], "gnd": [{"bbx": None, "easy": []}]}, path)
    with pytest.raises(DeepretError, match=r"gnd_tiny\.pkl is not in revisitop format: gnd\[0\]"):
        load_benchmark("tiny", tmp_path)
    write_gnd({"imlist": []}, path)
    with pytest.raises(DeepretError, match=r"gnd_tiny\.pkl .*missing keys \['qimlist', 'gnd'\]"):
        load_benchmark("tiny", tmp_path)


def test_error_gnd_pickle_with_code_is_refused(tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny" / "gnd_tiny.pkl"
    path.write_bytes(pickle.dumps({"imlist": Path("x")}))
    with pytest.raises(DeepretError, match="refusing to load pathlib"):
        load_benchmark("tiny", tmp_path)


def test_error_root_without_images(tiny: Path, tmp_path: Path) -> None:
    for f in (tmp_path / "tiny" / "jpg").iterdir():
        f.unlink()
    with pytest.raises(DeepretError, match=r"dataset root without images: .*tiny/jpg"):
        load_benchmark("tiny", tmp_path)
    (tmp_path / "tiny" / "jpg").rmdir()
    with pytest.raises(DeepretError, match=r"dataset root without images: .*tiny/jpg .*deepret download"):
        load_benchmark("tiny", tmp_path)


def test_error_missing_image(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny" / "jpg" / "a_000002.jpg").unlink()
    (tmp_path / "tiny" / "jpg" / "b_000001.jpg").unlink()
    with pytest.raises(DeepretError, match=r"2 of 3 images of tiny are missing, the first is .*a_000002\.jpg"):
        load_benchmark("tiny", tmp_path)
    assert len(load_benchmark("tiny", tmp_path, check_images=False).imlist) == 3


def test_error_query_index_out_of_range(tiny: Path, tmp_path: Path) -> None:
    b = load_benchmark("tiny", tmp_path)
    for bad in (2, -1):
        with pytest.raises(DeepretError, match=rf"query index {bad} is out of range .*0\.\.1"):
            b.query_path(bad)
    with pytest.raises(DeepretError, match="query index 5"):
        b.check_query(5)
