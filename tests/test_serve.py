"""The web app's API (deepret.serve) through FastAPI's TestClient, on a small index of real Paris photos:
search by upload and by id, boxes, pagination, thumbnails, auth, uploads, every kind of bad input and
path traversal. Browser and real-socket tests: test_serve_browser.py."""
from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
import serve_collection
from fastapi.testclient import TestClient

from deepret.serve import create_app
from deepret.serve.server import exposure_warning

MAX_UPLOAD = 2 * 1024 * 1024  # small, so that the oversize test sends little


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(index_dir, collection) built once for the module."""
    return serve_collection.build(tmp_path_factory.mktemp("serve"))


def _client(index_dir, **kwargs) -> TestClient:
    return TestClient(create_app(index_dir, max_upload_bytes=kwargs.pop("max_upload_bytes", MAX_UPLOAD), **kwargs))


def _wait_ready(client: TestClient, headers=None) -> None:
    deadline = time.monotonic() + 120
    while client.get("/api/health", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the model did not load in 120 s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(built):
    with _client(built[0]) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def ids(client) -> list[int]:
    """The ids of the 35 indexed photos, sorted."""
    answer = _upload(client, _real_jpeg(), k=35).json()
    return sorted(h["id"] for h in answer["results"])


def _jpeg(path: Path) -> bytes:
    return Path(path).read_bytes()


def _upload(client, data: bytes, name="query.jpg", **form):
    return client.post("/api/search", files={"file": (name, data, "image/jpeg")},
                       data={k: str(v) for k, v in form.items()})


def _names(answer: dict) -> list[str]:
    return [Path(h["path"]).name for h in answer["results"]]


# --- searching ---------------------------------------------------------------------------------

def test_health_and_info_describe_the_index(client):
    health = client.get("/api/health").json()
    assert health == {"status": "ready", "images": 35}
    info = client.get("/api/info").json()
    assert info["images"] == 35 and info["dim"] == 1280 and info["factory"] == "Flat"
    assert "efficientnet_lite0-gem" in str(info["model"])
    assert info["bytes_per_vector"] >= 1280 * 4 and info["uploads"] is False
    assert info["rerank_toggles"] == {"qe": "alpha-qe", "diffusion": "diffusion"}
    assert info["query_precision"] == info["settings"]["precision"]  # built on this machine: its own
    assert info["query_engine"] == info["settings"]["engine"] == "openvino"  # auto on the CPU
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/search", "/api/images/{image_id}/thumb"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "https://" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200  # from the package, not a CDN
    assert "root" not in info  # no server path is sent (tests/test_serve_paths.py checks every route)


def test_a_precision_that_does_not_match_the_index_fails_the_load_with_the_reason(built, monkeypatch):
    import deepret.precision as P

    monkeypatch.setitem(P.REDUCED_OK, "efficientnet_lite0", ())  # no reduced precision accepted
    with _client(built[0], precision="fp16") as c:
        deadline = time.monotonic() + 120
        while (health := c.get("/api/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "is not measured to give the same ranking" in health.json()["detail"]
        assert c.post("/api/search", data={"id": "1"}).status_code == 503


def test_search_by_upload_with_the_official_box_finds_the_landmark(client):
    photo, box, positives = serve_collection.query("paris_eiffel_000266")
    answer = _upload(client, _jpeg(photo), box=",".join(map(str, box)), k=5).json()
    assert answer["query"]["box"] == list(box) and answer["query"]["source"] == "upload"
    assert (answer["query"]["width"], answer["query"]["height"]) == Image.open(photo).size
    names = _names(answer)
    assert len(names) == 5 and answer["total"] == 35 and answer["more"] is True
    assert names[0] in positives, names
    assert sum(n in positives for n in names) >= 4, names
    scores = [h["score"] for h in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["timings"]["total"] > 0 and "describe" in answer["timings"]


def test_a_box_changes_the_query(client):
    photo, box, _ = serve_collection.query("paris_louvre_000081")
    whole = _upload(client, _jpeg(photo), k=35).json()
    boxed = _upload(client, _jpeg(photo), box="0,0,300,200", k=35).json()
    assert whole["query"]["box"] is None and boxed["query"]["box"] == [0, 0, 300, 200]
    assert {h["id"]: h["score"] for h in whole["results"]} != {h["id"]: h["score"] for h in boxed["results"]}


def test_search_by_id_finds_itself_first_and_pages_cover_the_ranking_once(client, ids):
    first = client.post("/api/search", data={"id": ids[3], "k": 35}).json()
    assert first["results"][0]["id"] == ids[3] and first["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["query"]["source"] == "id" and first["more"] is False
    pages, offset = [], 0
    while True:
        page = client.post("/api/search", data={"id": ids[3], "k": 10, "offset": offset}).json()
        assert page["offset"] == offset
        pages += page["results"]
        offset += 10
        if not page["more"]:
            break
    assert offset == 40 and len(pages) == 35
    assert [h["id"] for h in pages] == [h["id"] for h in first["results"]]
    beyond = client.post("/api/search", data={"id": ids[3], "k": 10, "offset": 100}).json()
    assert beyond["results"] == [] and beyond["more"] is False


def test_search_by_id_with_a_box(client, ids):
    whole = client.post("/api/search", data={"id": ids[10], "k": 5}).json()
    w, h = whole["query"]["width"], whole["query"]["height"]
    boxed = client.post("/api/search", data={"id": ids[10], "k": 5, "box": f"0,0,{w // 2},{h // 2}"}).json()
    assert boxed["query"]["box"] == [0, 0, w // 2, h // 2]
    assert boxed["results"][0]["score"] < 0.9999  # a crop is not the photo itself


def test_rerank_toggles_change_the_grid(client, ids):
    plain = client.post("/api/search", data={"id": ids[10], "k": 35}).json()
    for spec in ("alpha-qe", "diffusion"):
        answer = client.post("/api/search", data={"id": ids[10], "k": 35, "rerank": spec})
        assert answer.status_code == 200, answer.json()
        assert answer.json()["rerank"] == spec
        assert [h["score"] for h in answer.json()["results"]] != [h["score"] for h in plain["results"]]


# --- images and thumbnails -----------------------------------------------------------------------

def test_image_and_cached_upright_thumbnail(client, built, ids):
    index_dir, photos = built
    hit = client.post("/api/search", data={"id": ids[0], "k": 1}).json()["results"][0]
    original = client.get(f"/api/images/{hit['id']}")
    assert original.status_code == 200 and original.content == (photos / hit["path"]).read_bytes()
    thumb = client.get(f"/api/images/{hit['id']}/thumb", params={"size": 100})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(thumb.content))
    full = Image.open(photos / hit["path"]).size
    assert max(im.size) == 128 and (im.width > im.height) == (full[0] > full[1])
    cached = list((index_dir / "thumbs" / "128").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == thumb.content
    assert not list((index_dir / "thumbs").rglob("*.tmp"))
    assert client.get(f"/api/images/{hit['id']}/thumb", params={"size": 100}).content == thumb.content


# --- bad input -----------------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds almost nothing: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _real_jpeg() -> bytes:
    return _jpeg(serve_collection.query()[0])


BAD_UPLOADS = {
    "empty": (b"", 400),
    "text": (b"hello, this is not a photo", 415),
    "html": (b"<html><script>alert(1)</script></html>", 415),
    "truncated": (None, 400),  # the first half of a real JPEG
    "oversized": (b"\xff\xd8" + b"\0" * (MAX_UPLOAD + 10), 413),
    "bomb over Pillow's limit": (_png_header(30000, 30000), 413),
    "bomb over ours": (_png_header(9000, 9000), 413),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_bad_uploads_get_a_one_line_4xx(client, kind):
    data, status = BAD_UPLOADS[kind]
    if data is None:
        full = _real_jpeg()
        data = full[: len(full) // 2]
    response = _upload(client, data, name=f"{kind}.jpg")
    _assert_one_line_error(response, status)
    assert client.get("/api/health").json()["status"] == "ready"  # the server is still fine


BAD_FORMS = {
    "box of three numbers": ({"box": "1,2,3"}, 422),
    "box of words": ({"box": "a,b,c,d"}, 422),
    "box upside down": ({"box": "300,300,100,100"}, 422),
    "box outside": ({"box": "0,0,5000,5000"}, 422),
    "box of no area": ({"box": "10,10,10,200"}, 422),
    "box with nan": ({"box": "nan,0,100,100"}, 422),
    "box with inf": ({"box": "0,0,inf,100"}, 422),
    "k zero": ({"k": "0"}, 422),
    "k huge": ({"k": "100000"}, 422),
    "k not a number": ({"k": "ten"}, 422),
    "negative offset": ({"offset": "-1"}, 422),
    "unknown rerank": ({"rerank": "no-such-method"}, 400),
}


@pytest.mark.parametrize("kind", BAD_FORMS)
def test_bad_form_fields_get_a_one_line_4xx(client, ids, kind):
    fields, status = BAD_FORMS[kind]
    _assert_one_line_error(_upload(client, _real_jpeg(), **fields), status)
    _assert_one_line_error(client.post("/api/search", data={"id": ids[0], **fields}), status)


@pytest.mark.parametrize("data, status", [
    ({}, 422),                           # neither file nor id
    ({"id": "999"}, 404),                # unknown id
    ({"id": "-1"}, 422),                 # ids are SQLite integers: 0 .. 2**63 - 1
    ({"id": "0"}, 404),
    ({"id": str(2**63 - 1)}, 404),
    ({"id": str(2**63)}, 422),
    ({"id": "999999999999999999999"}, 422),
    ({"id": "../../etc/passwd"}, 422),   # ids are numbers
    ({"id": "1e3"}, 422),
])
def test_bad_ids_get_a_one_line_4xx(client, data, status):
    _assert_one_line_error(client.post("/api/search", data=data), status)


def test_both_file_and_id_is_refused(client):
    response = client.post("/api/search", files={"file": ("q.jpg", _real_jpeg(), "image/jpeg")}, data={"id": "1"})
    _assert_one_line_error(response, 422)


def test_a_body_over_the_limit_is_refused_before_parsing(client):
    response = client.post("/api/search", content=b"x" * (MAX_UPLOAD + 100 * 1024),
                           headers={"content-type": "multipart/form-data; boundary=zzz"})
    _assert_one_line_error(response, 413)
    _assert_one_line_error(client.post("/api/info", content=b"x" * 200_000), 413)


def _assert_one_line_error(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and len(detail) < 300, detail
    assert "Traceback" not in detail


# --- paths never leave the collection --------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/images/..", "/api/images/%2Fetc%2Fpasswd", "/api/images//etc/passwd", "/api/images/0/../../../etc/passwd",
    "/api/images/-1", "/api/images/99999", "/api/images/1.5", "/api/images/0%00",
    "/api/images/999999999999999999999", "/api/images/9223372036854775808/thumb",
    "/api/images/..%2F..%2Fetc%2Fpasswd/thumb", "/api/images/99999/thumb",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2F..%2Fapp.py",
    "/static/%2e%2e/app.py", "/static//etc/passwd",
])
def test_traversal_never_reaches_a_file_outside(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"root:" not in response.content and b"def create_app" not in response.content


def test_a_symlink_pointing_out_of_the_collection_is_not_served(client, built, ids, tmp_path):
    _, photos = built
    hit = client.post("/api/search", data={"id": ids[5], "k": 1}).json()["results"][0]
    victim = photos / hit["path"]
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(victim.read_bytes())
    original = victim.read_bytes()
    victim.unlink()
    victim.symlink_to(outside)
    try:
        for url in (f"/api/images/{hit['id']}", f"/api/images/{hit['id']}/thumb?size=999"):
            _assert_one_line_error(client.get(url), 404)
        _assert_one_line_error(client.post("/api/search", data={"id": hit["id"], "box": "0,0,50,50"}), 404)
    finally:
        victim.unlink()
        victim.write_bytes(original)


# --- auth and exposure ---------------------------------------------------------------------------

def test_every_api_call_needs_the_token_when_one_is_set(built, ids):
    with _client(built[0], token="s3cret") as c:
        good = {"Authorization": "Bearer s3cret"}
        _wait_ready(c, headers=good)
        for method, url in (("get", "/api/health"), ("get", "/api/info"), ("get", f"/api/images/{ids[0]}"),
                            ("get", f"/api/images/{ids[0]}/thumb"), ("post", "/api/search"), ("post", "/api/images")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}):
                response = getattr(c, method)(url, headers=headers)
                assert response.status_code == 401, (url, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/info", headers=good).status_code == 200
        assert c.get(f"/api/images/{ids[0]}/thumb", headers=good).status_code == 200
        assert c.post("/api/search", data={"id": ids[0]}, headers=good).status_code == 200
        assert c.get("/").status_code == 200  # the page itself asks for the token
        # refused before the body is read: a large unauthenticated upload gets 401, not 413
        big = c.post("/api/search", content=b"x" * (MAX_UPLOAD * 3), headers={"content-type": "multipart/form-data"})
        assert big.status_code == 401


def test_binding_beyond_loopback_without_a_token_warns():
    assert "without a token" in exposure_warning("0.0.0.0", None)
    assert "add photos" in exposure_warning("192.168.1.5", None, allow_uploads=True)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert exposure_warning(host, None) is None
    assert exposure_warning("0.0.0.0", "tok") is None


# --- uploads into the collection -----------------------------------------------------------------

def test_uploads_are_off_by_default(client):
    _assert_one_line_error(client.post("/api/images", files=[("files", ("a.jpg", _real_jpeg(), "image/jpeg"))]), 403)


def _rotated_with_exif(path: Path) -> bytes:
    """The photo's pixels turned 90 degrees and tagged EXIF orientation 6, so that upright it is the photo."""
    im = Image.open(path).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


def test_an_upload_is_saved_safely_and_searchable_at_once(built):
    index_dir, photos = built
    photo, _, positives = serve_collection.query("paris_invalides_000072")
    data = _rotated_with_exif(photo)
    with _client(index_dir, allow_uploads=True) as c:
        _wait_ready(c)
        before = c.get("/api/info").json()["images"]
        bad = c.post("/api/images", files=[("files", ("../../evil.jpg", data, "image/jpeg")),
                                           ("files", ("x.txt", b"not a photo", "text/plain"))])
        _assert_one_line_error(bad, 415)
        gif = io.BytesIO()
        Image.open(photo).convert("P").save(gif, "GIF")
        _assert_one_line_error(c.post("/api/images", files=[("files", ("a.gif", gif.getvalue(), "image/gif"))]), 415)
        assert not (photos / "uploads").exists() or not list((photos / "uploads").iterdir())  # all or nothing
        added = c.post("/api/images", files=[("files", ("../../evil.jpg", data, "image/jpeg"))])
        assert added.status_code == 200, added.text
        body = added.json()
        assert body["images"] == before + 1 and len(body["added"]) == 1
        rel = body["added"][0]
        assert rel.startswith("uploads/") and "evil" not in rel and ".." not in rel
        assert (photos / rel).read_bytes() == data
        assert not (photos.parent / "evil.jpg").exists()
        answer = _upload(c, data, k=3).json()
        assert answer["total"] == before + 1
        top = answer["results"][0]
        assert top["path"] == rel and top["score"] == pytest.approx(1.0, abs=1e-3)
        # shown upright: the thumbnail has the original photo's shape, not the stored (turned) pixels' shape
        thumb = Image.open(io.BytesIO(c.get(f"/api/images/{top['id']}/thumb", params={"size": 128}).content))
        w, h = Image.open(photo).size
        assert w != h and (thumb.width > thumb.height) == (w > h)
        assert _names(answer)[1] in positives


def test_the_serve_command_refuses_a_folder_that_is_not_an_index(tmp_path, capsys, monkeypatch):
    from deepret.cli import main

    monkeypatch.delenv("DEEPRET_TOKEN", raising=False)
    assert main(["serve", "--index", str(tmp_path), "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "deepret: warning: serving on 0.0.0.0 without a token" in err
    assert f"deepret: error: {tmp_path} is not a deepret index" in err
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert main(["serve", "--index", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb 0" in capsys.readouterr().err
