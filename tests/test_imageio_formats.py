"""Photos as phones and cameras save them: HEIC and AVIF read upright, and the files a collection holds
that the index does not read (RAW, videos, documents) counted by kind, never dropped unsaid."""
from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pytest
from conftest import require_data
from PIL import Image, ImageOps

from deepret.imageio import PHOTO_SUFFIXES, ImageError, ImageSource, image_size, open_rgb, read_header
from deepret.index.photos import not_indexed_line, scan

FORMATS = {".heic": "HEIF", ".avif": "AVIF", ".jpg": "JPEG"}  # suffix: the Pillow format that writes it
CORNERS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # any turn or mirror moves them apart


def _quadrants(w: int = 96, h: int = 64) -> Image.Image:
    im = Image.new("RGB", (w, h))
    for (x, y), colour in zip([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)], CORNERS):
        im.paste(colour, (x, y, x + w // 2, y + h // 2))
    return im


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # bytes: pillow-heif turns the tag into the file's rotation only from bytes


def _encoded(im: Image.Image, suffix: str, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    im.save(buf, FORMATS[suffix], exif=_exif(orientation), quality=90)
    return buf.getvalue()


def _upright(raw: Image.Image, orientation: int) -> np.ndarray:
    """What a viewer shows of `raw` tagged with `orientation`: Pillow's own ImageOps.exif_transpose."""
    tagged = raw.copy()
    tagged.info["exif"] = _exif(orientation)
    return np.asarray(ImageOps.exif_transpose(tagged), dtype=float)


def test_heic_and_avif_are_collection_photo_suffixes():
    assert {".heic", ".heif", ".avif"} <= set(PHOTO_SUFFIXES)  # pillow-heif and Pillow's AVIF: dependencies


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_phone_formats_decode_upright_for_every_exif_orientation(suffix, orientation):
    raw = _quadrants()
    data = _encoded(raw, suffix, orientation)
    expected = _upright(raw, orientation)
    assert read_header(io.BytesIO(data)).format == FORMATS[suffix]
    assert image_size(io.BytesIO(data), upright=True) == (expected.shape[1], expected.shape[0])
    got = np.asarray(open_rgb(io.BytesIO(data), upright=True), dtype=float)
    assert got.shape == expected.shape and np.abs(got - expected).mean() < 8, orientation  # lossy, yet close
    if orientation != 1:  # the test tells the orientations apart: raw pixels are far from upright ones
        assert got.shape != np.asarray(raw).shape or np.abs(got - np.asarray(raw, dtype=float)).mean() > 60
    loaded = ImageSource([data], upright=True).load(0)  # as uploads and queries given as bytes are read
    assert np.abs(np.asarray(loaded, dtype=float) - expected).mean() < 8


def test_raw_coordinates_avif_keeps_them_heic_has_none(tmp_path):
    """upright=False (benchmarks: boxes in raw pixels) gives an AVIF's stored pixels, as a JPEG's; a HEIC's
    rotation is part of its image (libheif applies it, as every HEIF viewer does), so it is upright."""
    raw = _quadrants()
    avif, heic = _encoded(raw, ".avif", 6), _encoded(raw, ".heic", 6)
    assert np.abs(np.asarray(open_rgb(io.BytesIO(avif)), dtype=float) - np.asarray(raw, dtype=float)).mean() < 8
    assert np.abs(np.asarray(open_rgb(io.BytesIO(heic)), dtype=float) - _upright(raw, 6)).mean() < 8
    assert image_size(io.BytesIO(heic)) == (64, 96)


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_broken_and_oversized_phone_files_are_image_errors(tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = _encoded(Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)), suffix)
    for cut in (len(data) // 2, 40, 0):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(ImageError, match="corrupt or not an image") as err:
            open_rgb(path)
        assert err.value.path == str(path)
    with pytest.raises(ImageError, match="above the limit"):  # from the header, no pixel decoded
        open_rgb(io.BytesIO(data), max_pixels=10_000)


def test_uploads_take_heic_and_avif_through_imageio():
    from deepret.serve.inputs import decode_photo

    raw = _quadrants()
    for suffix in (".heic", ".avif"):
        photo = decode_photo(_encoded(raw, suffix, 6), f"IMG_0001{suffix}")
        assert photo.extension == suffix and photo.extension in PHOTO_SUFFIXES  # saved under its own suffix
        assert (photo.width, photo.height) == (64, 96)  # the upright size (boxes are given on it)


def _camera_folder(folder, with_photos: bool = True):
    """A phone's and a camera's dump: RAW, videos, a document, hidden and system files (and photos)."""
    for name, data in {"a/IMG_0001.CR2": b"II*\x00\x10\x00\x00\x00CR\x02\x00fake raw", "a/IMG_0002.cr2": b"II*\x00",
                       "b/DSC_0003.dng": b"II*\x00fake dng", "a/IMG_0004.MOV": b"\x00\x00\x00\x14ftypqt  ",
                       "b/clip.mp4": b"\x00\x00\x00\x18ftypmp42", "notes.pdf": b"%PDF-1.4", "README": b"hi",
                       ".DS_Store": b"\x00\x00\x00\x01Bud1", "a/Thumbs.db": b"\xd0\xcf", "a/._IMG_0001.jpg": b"\x00\x05",
                       ".hidden/x.mov": b"\x00", "b/desktop.ini": b"[.ShellClassInfo]"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if with_photos:
        (folder / "a" / "photo.jpg").write_bytes(_encoded(_quadrants(), ".jpg"))
    return {".cr2": 2, ".dng": 1, ".mov": 1, ".mp4": 1, ".pdf": 1, "(no suffix)": 1}


def test_scan_counts_the_files_it_does_not_index_by_suffix(tmp_path):
    expected = _camera_folder(tmp_path)
    counts: dict[str, int] = {}
    assert list(scan(tmp_path, not_indexed=counts)) == ["a/photo.jpg"]
    assert counts == expected  # hidden (dot) files and folders, Thumbs.db and desktop.ini left out
    assert not_indexed_line(counts) == ("7 files not indexed: 2 .cr2 (RAW, not supported), 1 (no suffix), "
                                        "1 .dng (RAW, not supported), 1 .mov (video), 1 .mp4 (video), 1 .pdf")
    assert not_indexed_line({".mov": 1}) == "1 file not indexed: 1 .mov (video)" and not_indexed_line({}) == ""


def _landmark(i: int, size=(240, 180)) -> Image.Image:
    src = sorted(require_data("landmarks-mini").rglob("*.jpg"))[i]
    return Image.open(src).convert("RGB").resize(size)


def test_a_phone_and_camera_folder_is_indexed_upright_and_the_rest_counted(tmp_path, capsys):
    """Acceptance: HEIC, AVIF and an EXIF-turned JPEG indexed upright; RAW and videos counted by kind in
    `index info` (text and JSON), in the build's summary and in /api/info; the count follows updates."""
    from fastapi.testclient import TestClient

    from deepret.cli import main
    from deepret.index import Index
    from deepret.serve import create_app

    photos = tmp_path / "photos"
    photos.mkdir()
    not_photos = _camera_folder(photos, with_photos=False)
    upright = {"IMG_0010.HEIC": _landmark(0), "IMG_0011.avif": _landmark(3), "IMG_0012.jpg": _landmark(6)}
    for name, im in upright.items():  # stored as a phone does: pixels turned, EXIF orientation 6
        (photos / name).write_bytes(_encoded(im.transpose(Image.Transpose.ROTATE_90), "." + name.split(".")[1].lower(), 6))
    ix = tmp_path / "ix"
    assert main(["index", "build", str(photos), "--index", str(ix), "--model", "efficientnet_lite0-gem",
                 "--size", "128", "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 images indexed, 0 skipped" in out and "7 files not indexed: 2 .cr2 (RAW, not supported)" in out
    assert main(["index", "info", "--index", str(ix), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["not_indexed"] == not_photos and list(info["not_indexed"])[0] == ".cr2" and info["skipped"] == []
    assert main(["index", "info", "--index", str(ix)]) == 0
    assert not_indexed_line(not_photos) in capsys.readouterr().out.splitlines()
    with sqlite3.connect(ix / "catalogue.sqlite") as db:  # upright sizes (stored turned: 180x240)
        sizes = {p: (w, h) for p, w, h in db.execute("SELECT path, width, height FROM files")}
    assert sizes == dict.fromkeys(upright, (240, 180))
    with Index.open(ix) as index:  # each is found by its upright pixels, and not by its stored (turned) ones
        for name, im in upright.items():
            hit = index.search(im, k=1).hits[0]
            assert hit.path == name and hit.score > 0.98, (name, hit)  # measured 0.997-0.999
            turned = index.search(im.transpose(Image.Transpose.ROTATE_90), k=3).hits
            assert {h.path: h.score for h in turned}[name] < 0.9, (name, turned)  # measured 0.51-0.64
    with TestClient(create_app(ix)) as client:
        assert client.get("/api/info").json()["not_indexed"] == not_photos
    (photos / "b" / "clip2.MP4").write_bytes(b"\x00")
    (photos / "a" / "IMG_0002.cr2").unlink()
    assert main(["index", "update", "--index", str(ix), "--quiet"]) == 0
    assert "7 files not indexed: 2 .mp4 (video), 1 (no suffix), 1 .cr2 (RAW" in capsys.readouterr().out
    with sqlite3.connect(ix / "catalogue.sqlite") as db:  # an index built before the count: said so, then counted
        db.execute("DELETE FROM meta WHERE key = 'not_indexed'")
    assert main(["index", "info", "--index", str(ix)]) == 0
    assert "files not indexed: not counted" in capsys.readouterr().out
    with Index.open(ix) as index:
        assert index.update().added == 0 and index.info()["not_indexed"]["(no suffix)"] == 1
