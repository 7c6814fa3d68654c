"""Collection-side decoding: EXIF orientation, pixel limit, and a zoo of awkward or broken files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_data
from PIL import Image

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings, extract
from deepret.imageio import ImageError, image_size, open_rgb
from deepret.models import create_model


def _photo(tmp_path):
    src = sorted(require_data("landmarks-mini").rglob("*.jpg"))[0]
    im = Image.open(src).convert("RGB")
    im.thumbnail((200, 200))
    return im


def bad_file_zoo(folder, im: Image.Image) -> tuple[dict[str, str], list[str]]:
    """Write awkward-but-valid files and broken files; returns ({broken name: reason word}, valid names)."""
    folder.mkdir(parents=True, exist_ok=True)
    im.convert("CMYK").save(folder / "cmyk.jpg")
    im.convert("L").save(folder / "gray.png")
    Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257).save(folder / "depth16.png")
    rgba = im.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    im.convert("P").save(folder / "palette.bmp")
    frames = [im, im.rotate(90)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:])  # a photo suffix
    im.save(folder / "photo.webp")
    im.save(folder / "photo.TIFF")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x89PNG this is not a png")
    full = folder / "full.jpg"
    im.save(full, quality=90)
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[:600])
    Image.new("L", (12000, 10000)).save(folder / "huge.png")  # 120 Mpx of zeros, a tiny file
    broken = {"empty.jpg": "corrupt", "garbage.png": "corrupt", "truncated.jpg": "corrupt", "huge.png": "Mpx"}
    valid = ["cmyk.jpg", "gray.png", "depth16.png", "alpha.png", "palette.bmp", "animated.gif", "animated.webp",
             "photo.webp", "photo.TIFF", "full.jpg"]
    return broken, valid


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, *bad_file_zoo(folder, _photo(folder))


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return create_model("resnet18-gem", weights="random")


def test_exif_orientation_is_applied_only_when_upright(tmp_path):
    im = Image.new("RGB", (60, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 10))  # blue top-left corner in raw pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=95)
    assert image_size(path) == (60, 40)
    assert image_size(path, upright=True) == (40, 60)
    raw, up = open_rgb(path), open_rgb(path, upright=True)
    assert raw.size == (60, 40) and up.size == (40, 60)
    assert np.asarray(up)[2, 37, 2] > 200  # the corner is now top-right, as a viewer shows it
    assert np.asarray(raw)[2, 2, 2] > 200
    # a box given on the upright image crops the upright pixels
    assert open_rgb(path, (30, 0, 40, 10), upright=True).getpixel((5, 5))[2] > 200


def test_awkward_modes_decode_to_sensible_rgb(zoo):
    folder, _broken, valid = zoo
    for name in valid:
        im = open_rgb(folder / name)
        assert im.mode == "RGB" and im.size[0] > 0, name
    depth = np.asarray(open_rgb(folder / "depth16.png"), dtype=float)
    gray = np.asarray(open_rgb(folder / "gray.png"), dtype=float)
    assert np.abs(depth - gray).max() <= 1  # 16-bit scaled down, not clipped to white
    assert np.asarray(open_rgb(folder / "alpha.png")).mean() > np.asarray(open_rgb(folder / "full.jpg")).mean()


def test_pixel_limit_refuses_bombs_and_can_be_raised(zoo):
    folder = zoo[0]
    with pytest.raises(ImageError, match="Mpx, above the limit"):
        image_size(folder / "huge.png")
    assert image_size(folder / "huge.png", max_pixels=200_000_000) == (12000, 10000)


def test_extract_raises_once_listing_every_broken_file(zoo, tiny_net):
    folder, broken, valid = zoo
    paths = [folder / n for n in sorted([*broken, *valid])]
    with pytest.raises(DeepretError) as err:
        extract(tiny_net, paths, settings=ExtractSettings(size=64), workers=0, progress=False)
    first, *rest = str(err.value).splitlines()  # the same message as the benchmark commands' check
    assert first.startswith(f"{len(broken)} of {len(paths)} images cannot be used (") and "and 1 more" in first
    assert first.endswith("replace or remove them; or raise --max-pixels if you trust it")  # huge.png's own advice
    assert len(rest) == len(broken) and all(any(name in line for line in rest) for name in broken)


@pytest.mark.parametrize("workers", [0, 2])
def test_extract_skip_returns_failures_with_reasons(zoo, tiny_net, workers):
    folder, broken, valid = zoo
    paths = [folder / n for n in sorted([*broken, *valid])]
    found = extract(tiny_net, paths, settings=ExtractSettings(size=64), workers=workers, progress=False,
                    on_error="skip", upright=True)
    v, failures = found.vectors, found.failed
    assert {paths[i].name for i in failures} == set(broken)
    for i, reason in failures.items():
        assert broken[paths[i].name] in reason
    norms = np.linalg.norm(v, axis=1)
    assert np.allclose(norms[[i for i in range(len(paths)) if i not in failures]], 1, atol=1e-4)
    assert np.all(norms[sorted(failures)] == 0)
    alone = extract(tiny_net, [folder / "full.jpg"], settings=ExtractSettings(size=64), workers=0, progress=False,
                    on_error="skip")
    assert alone.failed == {} and np.allclose(alone.vectors[0], v[paths.index(folder / "full.jpg")], atol=1e-5)


def test_awkward_files_are_indexed_end_to_end_and_broken_ones_listed(zoo, tmp_path):
    from deepret.imageio import PHOTO_SUFFIXES
    from deepret.index import build_index

    folder, broken, valid = zoo
    with build_index(folder, tmp_path / "ix", model="resnet18-gem", weights="random",
                     settings=ExtractSettings(size=64), progress=False) as index:
        info = index.info()
        assert {s["path"]: s["reason"] for s in info["skipped"]}.keys() == broken.keys()
        for s in info["skipped"]:
            assert broken[s["path"]] in s["reason"], s
        ids, x = index.vectors()
        photos = [n for n in valid if n.lower().endswith(PHOTO_SUFFIXES)]  # .gif is not a collection suffix
        assert {"cmyk.jpg", "gray.png", "depth16.png", "alpha.png", "animated.webp"} <= set(photos)
        assert sorted(index.path_of(int(i)).name for i in ids) == sorted(photos)
        assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
        for i, v in zip(ids, x):  # every stored photo is found as itself (gray.png and depth16.png tie)
            hits = index.search_vector(v, k=3).hits
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert i in [h.id for h in hits if h.score > hits[0].score - 1e-4]
        hit = index.search(folder / "cmyk.jpg", k=1).hits[0]
        assert hit.path == "cmyk.jpg" and hit.score == pytest.approx(1.0, abs=1e-4)


def test_a_trained_factory_builds_with_train_on(zoo, tmp_path):
    from deepret.index import build_index

    train_on = zoo[0]  # 9 usable photos: enough for 4 lists
    photos = tmp_path / "photos"
    photos.mkdir()
    for j, p in enumerate(sorted(require_data("landmarks-mini").rglob("*.jpg"))[:3]):
        Image.open(p).convert("RGB").resize((96, 72)).save(photos / f"{j}.jpg")
    kw = dict(model="resnet18-gem", weights="random", settings=ExtractSettings(size=64), progress=False)
    with pytest.raises(DeepretError, match=r"needs at least 4 training vectors.*--train-on"):
        build_index(photos, tmp_path / "ix", factory="IVF4,Flat", **kw)
    with build_index(photos, tmp_path / "ix", factory="IVF4,Flat", train_on=train_on, **kw) as index:
        info = index.info()
        assert info["factory"] == "IVF4,Flat" and info["images"] == 3
        assert (tmp_path / "ix" / "trained.faiss").is_file()
        ids, x = index.vectors()
        for i, v in zip(ids, x):
            assert index.search_vector(v, k=1).hits[0].id == i
        assert info["bytes_per_vector"] > 512 * 4
