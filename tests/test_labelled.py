"""Labelled training images: folder / GLDv2 CSV / list layouts, splits, rankable classes, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_data
from PIL import Image

from deepret.datasets.labelled import LabelledImages, load_labelled, rankable, split
from deepret.errors import DeepretError

MINI_COUNTS = {"london_bridge": 4, "piazza_san_marco": 5, "sacre_coeur": 10,
               "st_pauls_cathedral": 2, "united_states_capitol": 2}
# GLDv2-style 16-hex ids -> landmark id; landmark 7 has a single image.
GLD = {"0a1b2c3d4e5f6071": "12", "0a1ffff000000001": "12", "1b2c3d4e5f607182": "12",
       "fedcba9876543210": "3", "f0e1d2c3b4a59687": "3", "abcdef0123456789": "7"}


@pytest.fixture
def mini() -> LabelledImages:
    return load_labelled(require_data("landmarks-mini"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (120, 30, 200)).save(path)
    return path


@pytest.fixture
def gld(tmp_path) -> Path:
    """A GLDv2-shaped tree: images at train/a/b/c/<id>.jpg, with train.csv and train_clean.csv beside them."""
    for image_id in GLD:
        _jpg(tmp_path / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
    rows = [f"{i},http://example.com/{i}.jpg,{lm}" for i, lm in GLD.items()]
    (tmp_path / "train" / "train.csv").write_text("id,url,landmark_id\n" + "\n".join(rows) + "\n")
    clean = [f"{lm},{' '.join(i for i in GLD if GLD[i] == lm)}" for lm in ("3", "7", "12")]
    (tmp_path / "train" / "train_clean.csv").write_text("landmark_id,images\n" + "\n".join(clean) + "\n")
    return tmp_path


def _pairs(data: LabelledImages) -> set[tuple[str, str]]:
    return {(p.stem, data.classes[label]) for p, label in zip(data.paths, data.labels)}


def test_landmarks_mini_folder_layout(mini):
    root = require_data("landmarks-mini")
    assert len(mini) == 23 and mini.classes == sorted(MINI_COUNTS)
    assert mini.counts() == MINI_COUNTS
    assert mini.counts() == {d.name: len(list(d.glob("*.jpg"))) for d in root.iterdir() if d.is_dir()}
    for path, label in zip(mini.paths, mini.labels):
        assert path.is_file() and path.parent.name == mini.classes[label]
    assert mini.paths == sorted(mini.paths)  # deterministic order
    assert {label: len(ix) for label, ix in mini.by_class().items()} == dict(enumerate(MINI_COUNTS.values()))
    mini.require_classes(5)


def test_folder_layout_suffixes_case_insensitive(tmp_path):
    for name in ("b/1.JPG", "b/2.jpeg", "a/3.png", "a/deeper/4.jpg", ".hidden/5.jpg"):
        _jpg(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = load_labelled(tmp_path)
    assert data.classes == ["a", "b"] and [p.name for p in data.paths] == ["3.png", "1.JPG", "2.jpeg"]


def test_folder_layout_reads_every_photo_format_the_index_reads(tmp_path):
    import deepret.imageio  # noqa: F401  (registers the HEIF opener)

    (tmp_path / "a").mkdir()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "a" / "phone.heic")
    _jpg(tmp_path / "a" / "camera.jpg")
    data = load_labelled(tmp_path)
    assert sorted(p.name for p in data.paths) == ["camera.jpg", "phone.heic"]


def test_gld_csv_layouts_and_list_file_agree(gld):
    train = load_labelled(gld / "train" / "train.csv")
    clean = load_labelled(gld / "train" / "train_clean.csv")
    expected = set(GLD.items())
    assert _pairs(train) == _pairs(clean) == expected
    assert train.classes == clean.classes == ["3", "7", "12"]  # numeric ids sort numerically
    assert train.paths[0] == gld / "train" / "0" / "a" / "1" / "0a1b2c3d4e5f6071.jpg"
    lines = [f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg {lm}" for i, lm in GLD.items()]
    (gld / "train" / "list.txt").write_text("# path label\n\n" + "\n".join(lines) + "\n")
    listed = load_labelled(gld / "train" / "list.txt")
    assert _pairs(listed) == expected and listed.classes == train.classes
    assert [listed.classes[x] for x in listed.labels] == [train.classes[x] for x in train.labels]


def test_csv_and_list_root_argument(gld, tmp_path):
    csv = tmp_path / "elsewhere" / "train.csv"
    csv.parent.mkdir()
    csv.write_text((gld / "train" / "train.csv").read_text())
    assert _pairs(load_labelled(csv, root=gld / "train")) == set(GLD.items())
    lst = tmp_path / "elsewhere" / "mini.lst"
    spaced = _jpg(tmp_path / "my photos" / "a b.jpg")
    lst.write_text("london_bridge/london_bridge_19481797_2295892421.jpg London-Bridge\n"
                   f"sacre_coeur/02928139_3448003521.jpg sacré-cœur\n{spaced} London-Bridge\n")
    data = load_labelled(lst, root=require_data("landmarks-mini"))  # absolute paths ignore root
    assert data.classes == ["London-Bridge", "sacré-cœur"] and data.labels == [0, 1, 0]
    assert data.paths[0].is_file() and data.paths[2] == spaced  # the label is the last word


def test_split_reproducible_and_stratified(mini):
    train, val = split(mini, 0.3, seed=1)
    again_train, again_val = split(mini, 0.3, seed=1)
    assert (train.paths, val.paths) == (again_train.paths, again_val.paths)
    assert split(mini, 0.3, seed=2)[1].paths != val.paths
    assert len(val) == round(23 * 0.3) and sorted(train.paths + val.paths) == mini.paths
    assert set(train.paths).isdisjoint(val.paths) and train.classes == val.classes == mini.classes
    for seed in range(10):
        for fraction in (0.2, 0.5, 0.9):
            assert set(split(mini, fraction, seed)[0].counts()) == set(MINI_COUNTS)  # every class keeps one
    assert len(split(mini, 0.0, seed=0)[1]) == 0


def test_split_by_class_moves_whole_classes(mini):
    train, val = split(mini, 0.4, seed=3, by="class")
    assert set(train.counts()).isdisjoint(val.counts()) and len(val.counts()) == 2
    assert all(val.counts()[name] == MINI_COUNTS[name] for name in val.counts())
    assert split(mini, 0.4, seed=3, by="class")[1].paths == val.paths
    assert {tuple(split(mini, 0.4, seed=s, by="class")[1].counts()) for s in range(6)} != {tuple(val.counts())}
    with pytest.raises(DeepretError, match="'landmark'"):
        split(mini, 0.4, by="landmark")
    with pytest.raises(DeepretError, match="1.5"):
        split(mini, 1.5)


def test_rankable_drops_single_image_classes(mini):
    kept, dropped = rankable(mini)
    assert dropped == [] and kept.counts() == MINI_COUNTS
    groups = mini.by_class()
    one_each = [groups[3][0], groups[4][0]] + groups[0] + groups[2]  # st_pauls and capitol left with 1 image
    kept, dropped = rankable(mini.subset(one_each))
    assert dropped == ["st_pauls_cathedral", "united_states_capitol"]
    assert kept.classes == ["london_bridge", "sacre_coeur"] and kept.counts() == {"london_bridge": 4, "sacre_coeur": 10}
    assert all(kept.classes[label] == path.parent.name for path, label in zip(kept.paths, kept.labels))


def test_errors_name_the_file_or_value(tmp_path, gld, mini):
    with pytest.raises(DeepretError, match="nowhere.csv.*not found"):
        load_labelled(tmp_path / "nowhere.csv")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DeepretError, match=r"empty folder: .*empty"):
        load_labelled(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nabc123,4\n")
    with pytest.raises(DeepretError, match=r"bad\.csv: CSV columns image,label .*expected id,landmark_id"):
        load_labelled(bad)
    for image_id in ("fedcba9876543210", "abcdef0123456789"):
        (gld / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg").unlink()
    with pytest.raises(DeepretError, match=r"missing image .*fedcba9876543210\.jpg: 2 of 6 images .*train\.csv"):
        load_labelled(gld / "train" / "train.csv")
    one = load_labelled(_jpg(tmp_path / "one" / "only_class" / "x.jpg").parents[1])
    with pytest.raises(DeepretError, match=r"one has 1 class\(es\) \(only_class\).*at least 2"):
        one.require_classes()
    with pytest.raises(DeepretError, match="at least 6"):
        mini.require_classes(6)
    with pytest.raises(DeepretError, match=r"labels\.lst:2: expected `path label`, got 'no_label\.jpg'"):
        load_labelled(_write(tmp_path / "labels.lst", "a.jpg x\nno_label.jpg\n"))
    with pytest.raises(DeepretError, match=r"unsupported dataset source .*bad\.json"):
        load_labelled(_write(tmp_path / "bad.json", "{}"))
