"""The web app never sends a server path, and serves symlinked photos by the symlink rule.

A small index of a temporary collection of real Paris photos plus: a corrupt photo (skipped, with a
reason that names its file), a symlink to a photo of the collection (absolute target) and one with a
relative target, a symlink to a photo outside the collection, and a broken symlink. Every route of the
app's OpenAPI schema is called with valid requests (and some failing ones); no JSON value, header or
page holds the collection root, the index folder, the cache folder or any temporary folder.

The symlink rule: a symlinked photo is served when it resolves inside the collection, and is not
indexed otherwise. The scan side (skipping outside links at build time) is deepret.index's.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import serve_collection
from fastapi.testclient import TestClient

from deepret.serve import create_app

PHOTOS_PER_LANDMARK = 2


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(index_dir, photos, outside): the index of a collection with a corrupt photo and symlinks."""
    from deepret.extract import ExtractSettings
    from deepret.index import build_index

    tmp = tmp_path_factory.mktemp("serve-paths")
    jpg, _ = serve_collection.benchmark()
    photos, outside = tmp / "photos", tmp / "outside"
    for folder in (photos / "real", photos / "links", outside):
        folder.mkdir(parents=True)
    for name in serve_collection.QUERIES:  # the query photos themselves: 5 landmarks
        shutil.copy2(jpg / f"{name}.jpg", photos / "real" / f"{name}.jpg")
    (photos / "real" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    shutil.copy2(jpg / "paris_defense_000056.jpg", photos / "real" / os.fsdecode(b"bad\xff\xfename.jpg"))  # not UTF-8
    shutil.copy2(jpg / "paris_defense_000056.jpg", outside / "secret.jpg")
    (photos / "links" / "inside_abs.jpg").symlink_to(photos / "real" / "paris_eiffel_000266.jpg")
    (photos / "links" / "inside_rel.jpg").symlink_to(Path("..") / "real" / "paris_louvre_000081.jpg")
    (photos / "links" / "outside.jpg").symlink_to(outside / "secret.jpg")
    (photos / "links" / "broken.jpg").symlink_to(photos / "real" / "gone.jpg")
    index_dir = tmp / "index"
    build_index(photos, index_dir, model="efficientnet_lite0-gem", settings=ExtractSettings(size=serve_collection.SIZE),
                progress=False).close()
    return index_dir, photos, outside


@pytest.fixture(scope="module")
def client(collection):
    with TestClient(create_app(collection[0], allow_uploads=True)) as c:
        deadline = time.monotonic() + 120
        while c.get("/api/health").status_code != 200:
            assert time.monotonic() < deadline, "the model did not load in 120 s"
            time.sleep(0.1)
        yield c


def _indexed(client) -> dict[str, int]:
    """{path relative to the collection: id} of every indexed photo."""
    query = (serve_collection.benchmark()[0] / "paris_eiffel_000266.jpg").read_bytes()
    answer = client.post("/api/search", files={"file": ("q.jpg", query, "image/jpeg")}, data={"k": "100"}).json()
    assert answer["total"] == len(answer["results"])
    return {h["path"]: h["id"] for h in answer["results"]}


# --- no server path in any response ----------------------------------------------------------------

def _server_paths(collection) -> set[str]:
    index_dir, photos, outside = collection
    paths = {str(p) for p in (photos, photos.resolve(), index_dir, index_dir.resolve(), outside, outside.resolve())}
    return paths | {os.environ["DEEPRET_CACHE"], tempfile.gettempdir(), str(Path.home()), str(Path.cwd())}


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_response_holds_a_server_path(client, collection):
    index_dir, photos, _ = collection
    indexed = _indexed(client)
    some_id = indexed["real/paris_eiffel_000266.jpg"]
    upload = (photos / "real" / "paris_invalides_000072.jpg").read_bytes()
    jpeg = {"file": ("/home/someone/q.jpg", upload, "image/jpeg")}
    calls = {  # (method, route): the requests made, valid ones first
        ("get", "/api/health"): [("/api/health", {})],
        ("get", "/api/info"): [("/api/info", {})],
        ("post", "/api/search"): [
            ("/api/search", {"files": jpeg, "data": {"k": "5", "box": "10,10,200,200", "rerank": "alpha-qe"}}),
            ("/api/search", {"data": {"id": str(some_id), "k": "5"}}),
            ("/api/search", {"data": {"id": str(some_id), "rerank": "no-such-method"}}),
            ("/api/search", {"data": {"id": "123456789"}}),
            ("/api/search", {"data": {"id": str(some_id), "box": "0,0,9999,9999"}}),
        ],
        ("get", "/api/images/{image_id}"): [(f"/api/images/{some_id}", {}), ("/api/images/123456789", {})],
        ("get", "/api/images/{image_id}/thumb"): [(f"/api/images/{some_id}/thumb", {"params": {"size": "64"}}),
                                                 ("/api/images/123456789/thumb", {})],
        ("post", "/api/images"): [("/api/images", {"files": [("files", ("x.jpg", upload, "image/jpeg"))]}),
                                  ("/api/images", {"files": [("files", ("x.jpg", b"not a photo", "image/jpeg"))]})],
    }
    schema = client.get("/openapi.json").json()
    routes = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert routes == set(calls), "a route of the schema is not exercised here (or is gone): add it to calls"
    forbidden = _server_paths(collection)
    answers = []
    for (method, _), requests in calls.items():
        for url, kwargs in requests:
            response = getattr(client, method)(url, **kwargs)
            assert response.status_code < 500, (url, response.text)
            body = response.json() if response.headers["content-type"].startswith("application/json") else None
            answers.append((url, response.status_code, body, dict(response.headers)))
    statuses = [status for _, status, _, _ in answers]
    assert statuses.count(200) >= 7 and {400, 404, 415, 422} <= set(statuses), statuses  # the failing ones failed
    info = client.get("/api/info").json()
    assert "root" not in info
    skipped = {s["path"]: s["reason"] for s in info["skipped"]}
    assert "real/corrupt.jpg" in skipped and "links/broken.jpg" in skipped, skipped
    for url in ("/openapi.json", "/", "/docs"):
        answers.append((url, 200, client.get(url).text, {}))
    for url, status, body, headers in answers:
        for text in _strings(body) + list(headers.values()):
            leaked = [p for p in forbidden if p in text]
            assert not leaked, f"{url} ({status}) sends {leaked}: {text!r}"


def test_skip_reasons_name_the_file_relative_to_the_collection(client):
    skipped = {s["path"]: s["reason"] for s in client.get("/api/info").json()["skipped"]}
    assert skipped["real/corrupt.jpg"], skipped
    assert "broken symbolic link" in skipped["links/broken.jpg"] and "gone.jpg" in skipped["links/broken.jpg"]
    for reason in skipped.values():
        assert not any(p.startswith("/") for p in reason.replace("'", " ").split()), reason


def test_redaction_keeps_relative_paths_and_drops_absolute_ones(tmp_path):
    from deepret.serve.redact import Redactor

    r = Redactor(tmp_path / "photos")
    root = str(tmp_path / "photos")
    assert r.text(f"cannot identify image file '{root}/a/x.jpg'") == "cannot identify image file 'a/x.jpg'"
    assert r.text("is a broken symbolic link (to /etc/secret/target.jpg)") == "is a broken symbolic link (to …/target.jpg)"
    assert r.text(f"image id 3 is not in index {tmp_path}/index") == "image id 3 is not in index …/index"
    for kept in ("box 1/2 of image/jpeg", "uploads/ab12.jpg", "http://milvus:19530/x", "x1,y1,x2,y2 ~/a"):
        assert r.text(kept) == kept
    assert r.value({"uri": f"{tmp_path}/m.db", "n": 3, "l": [root]}) == {"uri": "…/m.db", "n": 3, "l": ["…/photos"]}


# --- the symlink rule ----------------------------------------------------------------------------

def test_a_symlink_resolving_inside_the_collection_is_served(client, collection):
    _, photos, _ = collection
    indexed = _indexed(client)
    for link, target in (("links/inside_abs.jpg", "real/paris_eiffel_000266.jpg"),
                         ("links/inside_rel.jpg", "real/paris_louvre_000081.jpg")):
        assert link in indexed, sorted(indexed)
        image_id = indexed[link]
        original = client.get(f"/api/images/{image_id}")
        assert original.status_code == 200 and original.content == (photos / target).read_bytes()
        thumb = client.get(f"/api/images/{image_id}/thumb", params={"size": 64})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        found = client.post("/api/search", data={"id": str(image_id), "k": "3"}).json()
        assert found["query"]["path"] == target  # the photo it resolves to, relative to the collection
        top_two = {h["path"] for h in found["results"][:2]}
        assert top_two == {link, target}, found["results"]  # the same pixels: both score 1


def test_a_symlink_resolving_outside_the_collection_is_never_served(client):
    indexed = _indexed(client)
    if "links/outside.jpg" in indexed:  # indexed by a scan that follows it: still never served
        image_id = indexed["links/outside.jpg"]
        for url in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumb"):
            response = client.get(url)
            assert response.status_code == 404 and response.json()["detail"] == "no such image in the collection"
        assert client.post("/api/search", data={"id": str(image_id)}).status_code == 404


def test_every_indexed_photo_is_served_and_the_outside_link_is_skipped(client):
    indexed = _indexed(client)
    for path, image_id in indexed.items():
        assert client.get(f"/api/images/{image_id}/thumb", params={"size": 64}).status_code == 200, path
    skipped = {s["path"]: s["reason"] for s in client.get("/api/info").json()["skipped"]}
    assert "links/outside.jpg" not in indexed and skipped.get("links/outside.jpg"), skipped
    assert "real/bad\\xff\\xfename.jpg" in indexed  # a name that is not UTF-8: served, shown escaped (fileio.printable)
