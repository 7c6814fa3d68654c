"""deepret.index on real photos: build, search, update, resume after kill -9, concurrent readers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data
from PIL import Image

import deepret.index.build as build_mod
import deepret.index.photos as photos_mod
from deepret.cli import main
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index import Index, build_index, scan

SETTINGS = ExtractSettings(size=256)
SRC = Path(__file__).resolve().parents[1] / "src"


def make_collection(folder: Path, n: int = 10) -> dict[str, str]:
    """n real Paris photos (one in a sub-folder, upper-case suffix) and four broken files."""
    photos = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:n]
    folder.mkdir(parents=True)
    for p in photos[:-1]:
        shutil.copy(p, folder / p.name)
    (folder / "sub").mkdir()
    shutil.copy(photos[-1], folder / "sub" / (photos[-1].stem + ".JPG"))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x89PNG not a png")
    (folder / "truncated.jpg").write_bytes(photos[0].read_bytes()[:700])
    Image.new("L", (12000, 10000)).save(folder / "huge.png")
    (folder / "notes.txt").write_text("not a photo")
    return {"empty.jpg": "corrupt", "garbage.png": "corrupt", "truncated.jpg": "corrupt", "huge.png": "Mpx"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("index")
    broken = make_collection(base / "photos")
    index = build_index(base / "photos", base / "ix", settings=SETTINGS, progress=False)
    yield base, index, broken
    index.close()


def test_build_lists_photos_recursively_and_skips_broken_files_with_reasons(built):
    base, index, broken = built
    assert len(scan(base / "photos")) == 14 and "notes.txt" not in scan(base / "photos")
    info = index.info()
    assert info["images"] == len(index) == 10
    assert {s["path"] for s in info["skipped"]} == set(broken)
    for s in info["skipped"]:
        assert broken[s["path"]] in s["reason"]
    assert info["dim"] == 1280 and info["factory"] == "Flat" and info["backend"] == "faiss"
    assert info["settings"]["size"] == 256 and 5120 <= info["bytes_per_vector"] < 5200
    assert info["root"] == str((base / "photos").resolve())


def test_search_finds_the_query_photo_first_and_pages(built):
    base, index, _ = built
    ids, vectors = index.vectors()
    assert len(ids) == 10 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    target = index.path_of(int(ids[3]))
    assert target.is_file() and target.is_relative_to(index.root)
    result = index.search(target, k=4)
    assert result.hits[0].id == ids[3] and result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert result.total == 10 and set(result.timings) == {"describe", "search"}
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    exact, rounded = result.to_dict(), result.to_dict(rounded=True)
    assert json.loads(json.dumps(exact)) == exact and list(exact) == ["total", "timings_ms", "hits"]
    assert exact["total"] == 10 and exact["timings_ms"] == result.timings
    assert exact["hits"][0] == {"id": int(ids[3]), "path": result.hits[0].path, "score": result.hits[0].score}
    assert rounded["hits"][1]["score"] == round(result.hits[1].score, 6)
    assert rounded["timings_ms"] == {name: round(ms, 2) for name, ms in result.timings.items()}
    page = index.search_id(int(ids[3]), k=2, offset=2)
    assert [h.id for h in page.hits] == [h.id for h in result.hits[2:4]]
    assert index.search_vector(vectors[5], k=1).hits[0].path == index.path_of(int(ids[5])).relative_to(
        index.root).as_posix()
    cropped = index.search(target, box=(0, 0, 120, 120), k=10)
    assert cropped.hits[0].score < 0.999 and len(cropped.hits) == 10
    with pytest.raises(DeepretError, match="not in index"):
        index.path_of(10_000)
    # query expansion re-ranks the same collection: every image once, the query photo still first
    reranked = index.search_vector(vectors[0], k=10, rerank="qe:n=2")
    assert sorted(h.id for h in reranked.hits) == sorted(int(i) for i in ids)
    assert reranked.hits[0].id == ids[0] and set(reranked.timings) == {"rerank"}
    assert [h.score for h in reranked.hits] == sorted((h.score for h in reranked.hits), reverse=True)
    with pytest.raises(DeepretError, match="index's own model"):
        index.search_vector(np.ones(512, np.float32))


def test_other_model_or_changed_settings_are_refused(built, tmp_path):
    base, index, _ = built
    with pytest.raises(DeepretError, match="fingerprint"):
        build_index(base / "photos", base / "ix", model="efficientnet_lite0-gem", weights="random",
                    settings=SETTINGS, progress=False)
    with pytest.raises(DeepretError, match="settings"):
        build_index(base / "photos", base / "ix", settings=ExtractSettings(size=320), progress=False)
    from deepret.models import create_model

    with pytest.raises(DeepretError, match="own model"):
        index.check_model(create_model("efficientnet_lite0-gem", weights="random"))
    with pytest.raises(DeepretError, match="not a deepret index"):
        Index.open(tmp_path)


def test_a_bf16_index_is_queried_updated_and_resumed_in_fp32_where_bf16_is_slow(tmp_path, monkeypatch):
    import deepret.precision as P

    photos = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:4]
    (tmp_path / "photos").mkdir()
    for p in photos[:3]:
        shutil.copy(p, tmp_path / "photos" / p.name)
    lite0 = dict(model="efficientnet_lite0-gem", progress=False)  # torch: its bf16 autocast is what REDUCED_OK measured
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: p == "bf16")  # the machine that builds it
    index = build_index(tmp_path / "photos", tmp_path / "ix", settings=ExtractSettings(size=128, engine="torch"), **lite0)
    assert index.settings.precision == "bf16" == index.run_settings(index.load_model()).precision
    index.close()
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: p == "fp32")  # another machine: no bf16 instructions
    with Index.open(tmp_path / "ix") as index:
        net = index.load_model()
        assert index.settings.precision == "bf16" and index.run_settings(net).precision == "fp32"
        hit = index.search(photos[1]).hits[0]
        assert hit.path == photos[1].name and hit.score > 0.99  # fp32 query, bf16 database
        shutil.copy(photos[3], tmp_path / "photos" / photos[3].name)
        assert index.update().added == 1
        assert index.search(photos[3]).hits[0].path == photos[3].name
    # a build begun in bf16 goes on in fp32 (both within the tolerance for Lite0) ...
    build_index(tmp_path / "photos", tmp_path / "ix", settings=ExtractSettings(size=128, engine="torch"), **lite0).close()
    # ... but not for a network whose table does not accept bf16
    monkeypatch.setitem(P.REDUCED_OK, "efficientnet_lite0", ())
    with pytest.raises(DeepretError, match="settings"):
        build_index(tmp_path / "photos", tmp_path / "ix", settings=ExtractSettings(size=128, engine="torch"), **lite0)
    with Index.open(tmp_path / "ix") as index:  # not interchangeable: stays in the stored bf16
        assert index.run_settings(index.load_model()).precision == "bf16"


def test_an_index_stored_before_a_setting_existed_keeps_its_behaviour(tmp_path):
    photos = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:2]
    (tmp_path / "photos").mkdir()
    for p in photos:
        shutil.copy(p, tmp_path / "photos" / p.name)
    with build_index(tmp_path / "photos", tmp_path / "new", model="efficientnet_lite0-gem",
                     settings=ExtractSettings(size=128), progress=False) as index:
        assert index.settings.upscale is False  # new indexes keep small photos' sizes
    kw = dict(model="efficientnet_lite0-gem", settings=ExtractSettings(size=128, upscale=True), progress=False)
    build_index(tmp_path / "photos", tmp_path / "ix", **kw).close()
    db = sqlite3.connect(tmp_path / "ix" / "catalogue.sqlite")
    settings = json.loads(db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    assert settings.pop("upscale") is True
    with db:  # as an index written before `upscale` was a setting
        db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (json.dumps(settings),))
    db.close()
    with Index.open(tmp_path / "ix") as index:
        assert index.settings.upscale is True  # the behaviour it was built with
    build_index(tmp_path / "photos", tmp_path / "ix", **kw).close()  # the same settings: not refused
    with pytest.raises(DeepretError, match="settings"):
        build_index(tmp_path / "photos", tmp_path / "ix", **{**kw, "settings": ExtractSettings(size=128)})


def test_a_checkpoint_changed_after_the_build_is_refused(tmp_path):
    import torch

    from deepret.models import create_model, save

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(require_data("landmarks-mini").rglob("*.jpg"))[:2]:
        shutil.copy(p, photos / p.name)
    torch.manual_seed(0)
    ckpt = save(create_model("resnet18-gem", weights="random"), tmp_path / "net.pt")
    index = build_index(photos, tmp_path / "ix", model=str(ckpt), settings=ExtractSettings(size=64), progress=False)
    index.close()
    torch.manual_seed(1)
    save(create_model("resnet18-gem", weights="random"), ckpt)
    with Index.open(tmp_path / "ix") as index, pytest.raises(DeepretError, match="weights differ"):
        index.update()


def test_add_files_update_and_removal(built, tmp_path):
    base, index, _ = built
    photos = base / "photos"
    extra = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[20]
    new = photos / "sub" / "new one.jpg"
    shutil.copy(extra, new)
    try:
        report = index.add_files([new])
        assert (report.added, report.changed, report.removed) == (1, 0, 0) and len(index) == 11
        hit = index.search(new, k=1).hits[0]
        assert hit.path == "sub/new one.jpg" and hit.score == pytest.approx(1.0, abs=1e-4)
        with pytest.raises(DeepretError, match="not inside"):
            index.add_files([extra])
        # another process's Index sees the change without reopening
        with Index.open(base / "ix") as other:
            assert len(other) == 11
            Image.open(extra).rotate(90, expand=True).save(new)  # changed content, same name
            os.utime(new, ns=(time.time_ns(), time.time_ns() + 10**9))
            report = index.update()
            assert (report.added, report.changed, report.removed) == (0, 1, 0)
            top = other.search(new, k=1).hits[0]
            assert top.path == "sub/new one.jpg" and top.id != hit.id and top.score == pytest.approx(1.0, abs=1e-4)
    finally:
        new.unlink()
    report = index.update()
    assert (report.added, report.changed, report.removed) == (0, 0, 1) and len(index) == 10
    assert all(h.path != "sub/new one.jpg" for h in index.search_vector(index.vectors()[1][0], k=10).hits)


MAGENTA = (255, 0, 255)


def _phone_photo(photo: Path, path: Path) -> tuple[int, int]:
    """A 400x300 grey photo with a magenta patch at (40, 30)-(120, 90) when upright, stored as a phone
    does: the pixels turned 90 degrees and tagged EXIF orientation 6. Its upright size."""
    upright = Image.open(photo).convert("L").convert("RGB").resize((400, 300))
    upright.paste(MAGENTA, (40, 30, 120, 90))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return upright.size


def _where(pixels: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 of the pixels of `mask`."""
    ys, xs = np.nonzero(mask)
    assert len(xs) > 50, "colour not found in the query panel"
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_cli_build_info_search(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_collection(photos, n=4)
    assert _phone_photo(sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[5], photos / "phone.jpg") == (400, 300)
    ix = tmp_path / "ix"
    assert main(["index", "build", str(photos), "--index", str(ix), "--size", "256", "--workers", "0", "--quiet"]) == 0
    assert "5 images indexed" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(ix), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 5
    box = (20, 15, 200, 150)  # upright pixels, around the magenta patch
    assert main(["index", "search", "--index", str(ix), str(photos / "phone.jpg"), "--box", ",".join(map(str, box)),
                 "--topk", "3", "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "grid.png")]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert len(out["hits"]) == 3 and "phone.jpg" in [h["path"] for h in out["hits"]] and out["box"] == list(box)
    # the query panel (topk_figure: thumb 256, border 8, gap 12, title 44): the upright 400x300 photo
    # shrinks to 256x192 (scale 0.64), framed by 8 px, at the bottom of its 272 px square cell
    with Image.open(tmp_path / "grid.png") as im:
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    x0, y0, s = 12 + 8, 44 + 272 - 8 - 192, 0.64
    cell = pixels[44:44 + 272, 12:12 + 272]
    assert (cell[:272 - 208 - 4] < 240).any(axis=-1).mean() < 0.01  # above a landscape photo: white
    pixels[:, 12 + 272:] = 255  # the results (the photo is one of them) left out
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    patch = _where(pixels, (r > 180) & (g < 90) & (b > 180))
    expected = (x0 + 40 * s, y0 + 30 * s, x0 + 120 * s, y0 + 90 * s)
    assert np.allclose(patch, expected, atol=5), (patch, expected)  # the patch where it is upright
    drawn = _where(pixels, (r > 200) & (g > 170) & (b < 90))  # BBX_COLOUR: the box drawn on the query
    assert np.allclose(drawn, (x0 + box[0] * s, y0 + box[1] * s, x0 + box[2] * s, y0 + box[3] * s), atol=5), drawn
    assert main(["index", "info", "--index", str(tmp_path / "nothing")]) == 2
    assert "not a deepret index" in capsys.readouterr().err


def test_cli_search_precision_is_checked_against_the_index(built, tmp_path, capsys, monkeypatch):
    import deepret.precision as P

    base, index, _ = built
    query = index.path_of(int(index.vectors()[0][2]))
    args = ["index", "search", "--index", str(base / "ix"), str(query), "--topk", "1", "--json", str(tmp_path / "r.json")]
    stored, backbone = index.settings.precision, index.load_model().meta["backbone"]  # what auto meant here
    other = next(p for p in ("fp16", "bf16", "fp32") if p != stored and P.interchangeable(p, stored, backbone))
    assert main(args + ["--precision", other]) == 0  # both within the tolerance of fp32 (REDUCED_OK)
    assert json.loads((tmp_path / "r.json").read_text())["hits"][0]["path"] == query.relative_to(index.root).as_posix()
    monkeypatch.setitem(P.REDUCED_OK, index.load_model().meta["backbone"], ())
    assert main(args + ["--precision", other]) == 2
    err = capsys.readouterr().err
    assert f"holds {stored} descriptors" in err and f"--precision auto or {stored}" in err


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    with Index.open(index_dir) as index:
        ids, x = index.vectors()
        return {index.path_of(int(i)).name: v for i, v in zip(ids, x)}


def _done_rows(index_dir: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{index_dir / 'catalogue.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM files WHERE status != 'pending'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_build_killed_with_sigkill_resumes_without_re_extracting(built, tmp_path, monkeypatch):
    base, _index, _ = built
    code = (f"from deepret.index import build_index; from deepret.extract import ExtractSettings; "
            f"build_index({str(base / 'photos')!r}, {str(tmp_path / 'ix')!r}, settings=ExtractSettings(size=256), "
            f"progress=False, chunk=2)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        deadline = time.time() + 120
        while _done_rows(tmp_path / "ix") < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = _done_rows(tmp_path / "ix")
    assert 4 <= done < 14, "the build was not caught mid-way"
    with pytest.raises(DeepretError, match="has not finished"):
        Index.open(tmp_path / "ix")
    extracted = []
    real = build_mod.extract

    def counting(net, paths, **kw):
        extracted.extend(paths)
        return real(net, paths, **kw)

    monkeypatch.setattr(build_mod, "extract", counting)
    build_index(base / "photos", tmp_path / "ix", settings=SETTINGS, progress=False).close()
    assert len(extracted) == 14 - done
    resumed, whole = _stored(tmp_path / "ix"), _stored(base / "ix")
    assert resumed.keys() == whole.keys()
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], atol=1e-5)


UPDATER = """
import shutil, sys, pathlib, time
from deepret.index import Index
photos, ix, extra = map(pathlib.Path, sys.argv[1:4])
with Index.open(ix) as index:
    index.load_model()
    while True:
        target = photos / "zz_flip.jpg"
        if target.exists():
            target.unlink()
        else:
            shutil.copy(extra, target)
        index.update()
        print("updated", flush=True)
        time.sleep(0.2)  # let the reader see each state: a removal commits within milliseconds
"""


def _consistent(index_dir: Path, allowed: set[int]) -> None:
    with Index.open(index_dir) as index:
        assert len(index) in allowed
        db = index.catalogue.db
        ok = {r[0] for r in db.execute("SELECT id FROM files WHERE status = 'ok'")}
        assert ok == {r[0] for r in db.execute("SELECT id FROM vectors")}
        hits = index.search_vector(index.vectors()[1][0], k=20).hits
        assert {h.id for h in hits} == ok


def test_update_killed_at_random_moments_and_a_concurrent_reader(built, tmp_path):
    base, _index, _ = built
    ix = tmp_path / "ix"
    shutil.copytree(base / "ix", ix, ignore=shutil.ignore_patterns("*-shm"))
    photos = base / "photos"
    extra = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[25]
    errors, reads = [], []
    stop = threading.Event()

    def reader():
        with Index.open(ix) as index:
            v = index.vectors()[1][0]
            while not stop.is_set():
                try:
                    result = index.search_vector(v, k=20)
                    assert result.total in (10, 11) and len(result.hits) in (10, 11), result
                    reads.append(result.total)
                except Exception as exc:
                    errors.append(repr(exc))
                time.sleep(0.02)

    thread = threading.Thread(target=reader)
    thread.start()
    rng = np.random.default_rng(0)
    try:
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", UPDATER, str(photos), str(ix), str(extra)],
                                    env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "updated"
            time.sleep(float(rng.uniform(0.0, 1.5)))  # somewhere in a later update: extracting, committing
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _consistent(ix, {10, 11})
    finally:
        stop.set()
        thread.join()
        (photos / "zz_flip.jpg").unlink(missing_ok=True)
    assert not errors, errors[:3]
    assert set(reads) == {10, 11}, "the reader never saw an update"


def test_build_killed_after_publishing_but_before_ready_finishes_on_rerun(built, tmp_path, monkeypatch):
    """The vectors were written but the process died before marking the build ready: a rerun finishes
    it without extracting anything, and clears the temp files of the killed save (ours only)."""
    from deepret.index.catalogue import Catalogue

    base, _index, _ = built
    ix = tmp_path / "ix"
    shutil.copytree(base / "ix", ix, ignore=shutil.ignore_patterns("*-shm"))
    cat = Catalogue(ix)
    with cat.write() as db:
        Catalogue.set_meta(db, state="building")
    cat.close()
    with pytest.raises(DeepretError, match="has not finished"):
        Index.open(ix)
    stale = [ix / ".vectors-2.faiss.k3j_x9ab.tmp", ix / ".trained.faiss.0a1b2c3d.tmp"]
    others = [ix / ".notes.txt.k3j_x9ab.tmp", ix / "vectors-2.faiss.tmp", ix / "keep.tmp"]
    for p in stale + others:
        p.write_bytes(b"half a file")
    extracted = []
    real = build_mod.extract
    monkeypatch.setattr(build_mod, "extract", lambda net, paths, **kw: extracted.extend(paths) or real(net, paths, **kw))
    with build_index(base / "photos", ix, settings=SETTINGS, progress=False) as index:
        assert len(index) == 10 and extracted == []
        ids, x = index.vectors()
        assert index.search_vector(x[4], k=1).hits[0].id == ids[4]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    with Index.open(ix) as again:
        assert again.meta["state"] == "ready"


def test_scan_survives_dangling_links_and_files_removed_during_the_walk(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    (photos / "dangling.jpg").symlink_to(photos / "nowhere.jpg")
    real_walk = os.walk

    def walk_listing_a_vanished_file(top, *a, **kw):
        for folder, dirs, names in real_walk(top, *a, **kw):
            yield folder, dirs, names + ["vanished.jpg"]

    monkeypatch.setattr(photos_mod.os, "walk", walk_listing_a_vanished_file)
    found = scan(photos)
    assert found["dangling.jpg"] == photos_mod.UNREADABLE and "vanished.jpg" not in found
    assert found["a.jpg"][0] == 1


def test_dangling_link_is_skipped_with_its_reason_and_retried_once_fixed(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    src = sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[:3]
    for p in src[:2]:
        shutil.copy(p, photos / p.name)
    link = photos / "link.jpg"
    link.symlink_to(photos / ".later" / "missing.jpg")  # inside the collection (a hidden folder is not scanned)
    settings = ExtractSettings(size=64)
    with build_index(photos, tmp_path / "ix", settings=settings, progress=False) as index:
        assert len(index) == 2
        [skipped] = index.info()["skipped"]
        assert skipped["path"] == "link.jpg" and "broken symbolic link" in skipped["reason"]
        report = index.update()
        assert (report.added, report.changed, report.removed) == (0, 0, 0)
        (photos / ".later").mkdir()
        shutil.copy(src[2], photos / ".later" / "missing.jpg")  # the link's target appears
        report = index.update()
        assert report.changed == 1 and len(index) == 3 and index.info()["skipped"] == []
        assert index.search(link, k=1).hits[0].path == "link.jpg"


PERMISSION_BUILD = """
import json, sys
from deepret.extract import ExtractSettings
from deepret.index import build_index
with build_index(sys.argv[1], sys.argv[2], model="resnet18-gem", weights="random",
                 settings=ExtractSettings(size=64), progress=False) as index:
    print(json.dumps(index.info()["skipped"]))
"""


def test_unreadable_file_is_skipped_as_permission_denied(tmp_path):
    """chmod 000: root reads it anyway, so as root the build runs without the capabilities that let it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted(require_data("rparis6k-mini", "jpg").glob("*.jpg"))[0], photos / "ok.jpg")
    locked = photos / "locked.jpg"
    shutil.copy(photos / "ok.jpg", locked)
    locked.chmod(0)
    cmd = [sys.executable, "-c", PERMISSION_BUILD, str(photos), str(tmp_path / "ix")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] + cmd
    try:
        out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                             timeout=300)
    finally:
        locked.chmod(0o644)
    if out.returncode != 0 and "Operation not permitted" in out.stderr and "setpriv" in out.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-2000:]
    skipped = json.loads(out.stdout.strip().splitlines()[-1])
    assert skipped == [{"path": "locked.jpg", "reason": "cannot be read: permission denied"}]
