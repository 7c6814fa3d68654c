"""deepret.datasets.download end to end against a local HTTP server serving test-made archives."""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from deepret.datasets import download, load_benchmark
from deepret.datasets.sources import KNOWN_SHA256
from deepret.errors import DeepretError

OX_IMAGES = ["all_souls_000001", "all_souls_000002", "radcliffe_camera_000001"]
PARIS_IMAGES = {  # archive -> {landmark: images}
    "paris_1-v1.tgz": {"eiffel": ["paris_eiffel_000001", "paris_eiffel_000002"]},
    "paris_2-v1.tgz": {"louvre": ["paris_louvre_000001"], "pompidou": ["paris_pompidou_000001"]},
}
PARIS_CORRUPT = "paris_louvre_000999"  # in the archive, not in imlist (like the official corrupt ones)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (seed * 40 % 256, 80, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gnd(imlist: list[str]) -> bytes:
    gnd = [{"bbx": [0, 0, 8, 6], "ok": [1], "junk": []}, {"bbx": [1, 1, 5, 5], "ok": [0], "junk": [1]}]
    return pickle.dumps({"imlist": imlist, "qimlist": imlist[:2], "gnd": gnd})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves `files` under /mirror/; records (path, Range header); can ignore Range or cut a reply."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cut_next: set[str] = set()  # file names whose next reply stops halfway
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                name = self.path.removeprefix("/mirror/")
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.cut_next:
                    server.cut_next.discard(name)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def names(self) -> list[str]:
        return [path.removeprefix("/mirror/") for path, _ in self.requests]


@pytest.fixture
def mirror():
    ox_imgs = {f"{n}.jpg": _jpeg(i) for i, n in enumerate(OX_IMAGES)}
    files = {
        "oxbuild_images-v1.tgz": _tgz(ox_imgs),
        "gnd_oxford5k.pkl": _gnd(OX_IMAGES),
        "gnd_roxford5k.pkl": _gnd(OX_IMAGES[::-1]),
    }
    paris_imgs = {}
    for archive, landmarks in PARIS_IMAGES.items():
        members = {}
        for landmark, names in landmarks.items():
            for n in names:
                members[f"paris/{landmark}/{n}.jpg"] = paris_imgs[n] = _jpeg(len(paris_imgs))
        if archive == "paris_2-v1.tgz":
            members[f"paris/louvre/{PARIS_CORRUPT}.jpg"] = b"not a jpeg"
        files[archive] = _tgz(members)
    files["gnd_paris6k.pkl"] = _gnd(sorted(paris_imgs))
    server = Server(files)
    server.images = {**ox_imgs, **{f"{n}.jpg": d for n, d in paris_imgs.items()}}
    server.checksums = {name: _sha(data) for name, data in files.items()}
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _download(mirror: Server, name: str, root: Path, **kw) -> Path:
    kw.setdefault("checksums", mirror.checksums)
    return download(name, root, base_url=mirror.url + "/", progress=False, **kw)


def _assert_images(mirror: Server, bench) -> None:
    for i, name in enumerate(bench.imlist):
        assert bench.image_path(i).read_bytes() == mirror.images[f"{name}.jpg"]


def test_download_oxford_then_roxford_reuses_images(mirror: Server, tmp_path: Path) -> None:
    folder = download("oxford5k", tmp_path, base_url=mirror.url, progress=True, checksums=mirror.checksums)
    assert folder == tmp_path / "oxford5k"
    assert mirror.names() == ["oxbuild_images-v1.tgz", "gnd_oxford5k.pkl"]
    bench = load_benchmark("oxford5k", tmp_path)
    assert bench.imlist == OX_IMAGES
    _assert_images(mirror, bench)
    assert sorted(p.name for p in folder.iterdir()) == ["gnd_oxford5k.pkl", "jpg"]  # archive removed

    _download(mirror, "oxford5k", tmp_path)  # already done: the server sees nothing new
    assert len(mirror.requests) == 2

    _download(mirror, "roxford5k", tmp_path)  # same images: only its ground truth is fetched
    assert mirror.names()[2:] == ["gnd_roxford5k.pkl"]
    _assert_images(mirror, load_benchmark("roxford5k", tmp_path))


def test_download_paris_flattens_nested_folders(mirror: Server, tmp_path: Path) -> None:
    _download(mirror, "paris6k", tmp_path)
    assert mirror.names() == ["paris_1-v1.tgz", "paris_2-v1.tgz", "gnd_paris6k.pkl"]
    bench = load_benchmark("paris6k", tmp_path)
    assert len(bench.imlist) == 4
    _assert_images(mirror, bench)
    jpg = tmp_path / "paris6k" / "jpg"
    assert not any(p.is_dir() for p in jpg.iterdir())
    assert (jpg / f"{PARIS_CORRUPT}.jpg").is_file()  # kept, but not listed: ignored like revisitop
    _download(mirror, "paris6k", tmp_path)
    assert len(mirror.requests) == 3


def test_resume_from_part_file_with_range(mirror: Server, tmp_path: Path) -> None:
    archive = mirror.files["oxbuild_images-v1.tgz"]
    half = len(archive) // 2
    (tmp_path / "oxford5k").mkdir()
    (tmp_path / "oxford5k" / "oxbuild_images-v1.tgz.part").write_bytes(archive[:half])
    _download(mirror, "oxford5k", tmp_path)
    assert mirror.requests[0] == ("/mirror/oxbuild_images-v1.tgz", f"bytes={half}-")
    _assert_images(mirror, load_benchmark("oxford5k", tmp_path))


def test_interrupted_download_keeps_part_and_resumes(mirror: Server, tmp_path: Path) -> None:
    mirror.cut_next.add("oxbuild_images-v1.tgz")
    with pytest.raises(DeepretError, match=r"oxbuild_images-v1\.tgz failed .*rerun to resume"):
        _download(mirror, "oxford5k", tmp_path)
    part = tmp_path / "oxford5k" / "oxbuild_images-v1.tgz.part"
    size = part.stat().st_size
    assert 0 < size < len(mirror.files["oxbuild_images-v1.tgz"])
    _download(mirror, "oxford5k", tmp_path)
    assert mirror.requests[1] == ("/mirror/oxbuild_images-v1.tgz", f"bytes={size}-")
    assert not part.exists()
    _assert_images(mirror, load_benchmark("oxford5k", tmp_path))


def test_server_ignoring_range_restarts(mirror: Server, tmp_path: Path) -> None:
    mirror.ignore_range = True
    (tmp_path / "oxford5k").mkdir()
    (tmp_path / "oxford5k" / "oxbuild_images-v1.tgz.part").write_bytes(b"wrong prefix")
    _download(mirror, "oxford5k", tmp_path)  # appending would break the checksum
    assert mirror.requests[0][1] == "bytes=12-"
    _assert_images(mirror, load_benchmark("oxford5k", tmp_path))


def test_checksum_mismatch_removes_file(mirror: Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    actual = mirror.checksums["oxbuild_images-v1.tgz"]
    with pytest.raises(DeepretError) as e:
        _download(mirror, "oxford5k", tmp_path, checksums={**mirror.checksums, "oxbuild_images-v1.tgz": wrong})
    msg = str(e.value)
    assert "oxbuild_images-v1.tgz" in msg and wrong in msg and actual in msg and "removed" in msg
    assert list((tmp_path / "oxford5k").iterdir()) == []


def test_known_gnd_checksum_is_enforced(mirror: Server, tmp_path: Path) -> None:
    sums = {"oxbuild_images-v1.tgz": mirror.checksums["oxbuild_images-v1.tgz"]}  # gnd: official sha
    with pytest.raises(DeepretError, match=KNOWN_SHA256["gnd_oxford5k.pkl"]):
        _download(mirror, "oxford5k", tmp_path, checksums=sums)
    assert not (tmp_path / "oxford5k" / "gnd_oxford5k.pkl").exists()
    assert not (tmp_path / "oxford5k" / "gnd_oxford5k.pkl.part").exists()


def test_unsafe_archive_is_refused(mirror: Server, tmp_path: Path) -> None:
    mirror.files["oxbuild_images-v1.tgz"] = _tgz({"../evil.jpg": b"x", "ok.jpg": b"y"})
    with pytest.raises(DeepretError, match=r"oxbuild_images-v1\.tgz is corrupt or unsafe"):
        _download(mirror, "oxford5k", tmp_path, checksums={})
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "oxford5k" / "oxbuild_images-v1.tgz").exists()
    assert [p.name for p in (tmp_path / "oxford5k").iterdir()] == ["jpg"]


def test_network_errors_name_url_and_suggest_base_url(mirror: Server, tmp_path: Path) -> None:
    del mirror.files["gnd_oxford5k.pkl"]
    with pytest.raises(DeepretError, match=rf"{mirror.url}/gnd_oxford5k\.pkl failed: HTTP 404.*--base-url"):
        _download(mirror, "oxford5k", tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(DeepretError, match=rf"{dead}/oxbuild_images-v1\.tgz failed .*--base-url"):
        download("roxford5k", tmp_path / "other", base_url=dead, progress=False)


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DeepretError, match="unknown dataset 'oxford105k'.*roxford5k"):
        download("oxford105k", tmp_path)
