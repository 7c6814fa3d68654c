"""The web app over real sockets: `deepret serve` in a subprocess (uvicorn on 127.0.0.1), the page driven
in headless Chromium (upload a real photo, draw a box, read the grid, click a result, more, phone size),
a stalled client, searches while uploads are added, and a server killed while adding an upload.

Needs Debian's chromium + chromium-driver and selenium for the page test (skips saying so, fails in CI).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import serve_collection
from test_report_browser import _browser

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m deepret serve` on a free loopback port, waited for until /api/health says ready."""

    def __init__(self, index_dir: Path, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deepret", "serve", "--index", str(index_dir), "--port", str(self.port), *extra],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the server was not ready in 180 s: {log.read_text()[-2000:]}"
            try:
                if json.loads(urllib.request.urlopen(self.url + "/api/health", timeout=5).read())["status"] == "ready":
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _request(url: str, fields: dict | None = None, files: list[tuple[str, str, bytes]] | None = None,
             timeout: float = 60) -> tuple[int, dict]:
    """GET, or a multipart POST with `fields` and `files` [(field, filename, bytes)]: (status, JSON)."""
    data, headers = None, {}
    if fields is not None or files:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, filename, blob in files or []:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f'Content-Type: image/jpeg\r\n\r\n'.encode() + blob + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _ids(url: str) -> list[int]:
    """The ids of the photos in the index behind `url`, sorted."""
    query = serve_collection.query()[0].read_bytes()
    answer = _request(url + "/api/search", {"k": "100"}, [("file", "q.jpg", query)])[1]
    return sorted(h["id"] for h in answer["results"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return serve_collection.build(tmp_path_factory.mktemp("serve-browser"))


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    srv = Server(built[0], tmp_path_factory.mktemp("log") / "server.log", "--allow-uploads")
    yield srv
    srv.stop()


# --- the page ------------------------------------------------------------------------------------

def test_the_page_finds_the_landmark_in_a_drawn_box(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, box, positives = serve_collection.query("paris_eiffel_000266")
    browser = _browser()
    try:
        browser.set_window_size(1280, 900)
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/")
        wait.until(lambda b: "35 photos in the index" in b.find_element(By.ID, "info").text)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda b: "searched with the whole photo" in b.find_element(By.ID, "status").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results .hit")) == 20

        # draw the official box with the mouse (pointer events), in the displayed image's coordinates
        img = browser.find_element(By.ID, "query-img")
        shown_w, natural_w = browser.execute_script(
            "const i = arguments[0]; return [i.getBoundingClientRect().width, i.naturalWidth];", img)
        scale = shown_w / natural_w
        x1, y1, x2, y2 = (v * scale for v in box)
        shown_h = browser.execute_script("return arguments[0].getBoundingClientRect().height;", img)
        dx, dy = -shown_w / 2, -shown_h / 2  # Selenium offsets are from the element's centre
        ActionChains(browser).move_to_element_with_offset(img, int(x1 + dx) + 1, int(y1 + dy) + 1).click_and_hold() \
            .move_by_offset(int((x2 - x1) / 2), int((y2 - y1) / 2)).move_by_offset(int((x2 - x1) / 2), int((y2 - y1) / 2)) \
            .release().perform()
        wait.until(lambda b: "searched with the box" in b.find_element(By.ID, "status").text)
        wait.until(lambda b: all(b.execute_script(
            "return Array.from(document.querySelectorAll('#results img')).slice(0, 8)"
            ".map(i => i.complete && i.naturalWidth > 0)")))
        hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
        paths = [h.get_attribute("data-path") for h in hits]
        assert Path(paths[0]).name in positives, paths[:5]
        assert sum(Path(p).name in positives for p in paths[:5]) >= 4, paths[:5]
        assert "query" in browser.find_element(By.ID, "info").text and " ms" in browser.find_element(By.ID, "info").text
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("DEEPRET_SCREENSHOT"):
            shutil.copy(shot, os.environ["DEEPRET_SCREENSHOT"])

        # "more" adds the rest, then disappears
        browser.find_element(By.ID, "more").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .hit")) == 35)
        assert not browser.find_element(By.ID, "more").is_displayed()

        # click a result: it becomes the query (by id) and finds itself first
        second = hits[1].get_attribute("data-id")
        hits[1].click()
        wait.until(lambda b: "whole photo" in b.find_element(By.ID, "status").text, _state(browser))
        first = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[0].get_attribute("data-id")
        assert first == second, _state(browser)

        # a phone-sized screen: no sideways scrolling, two columns
        browser.set_window_size(390, 844)
        wait.until(lambda b: b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))
        columns = browser.execute_script(
            "return getComputedStyle(document.getElementById('results')).gridTemplateColumns.split(' ').length")
        assert columns == 2
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()


def test_the_rerank_toggles_change_the_grid(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def grid(b) -> list[str]:
        return [h.text for h in b.find_elements(By.CSS_SELECTOR, "#results .hit figcaption")]

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/")
        wait.until(lambda b: "photos in the index" in b.find_element(By.ID, "info").text)
        assert browser.find_element(By.ID, "qe").is_enabled()
        browser.find_element(By.ID, "file").send_keys(str(serve_collection.query("paris_louvre_000081")[0]))
        wait.until(lambda b: "searched with the whole photo" in b.find_element(By.ID, "status").text)
        plain = grid(browser)
        for toggle, spec in (("qe", "alpha-qe"), ("diffusion", "alpha-qe+diffusion")):
            browser.find_element(By.ID, toggle).click()
            wait.until(lambda b, spec=spec: f"re-ranked ({spec})" in b.find_element(By.ID, "status").text, _state(browser))
            assert grid(browser) != plain, spec
    finally:
        browser.quit()


def _state(browser) -> str:
    return browser.execute_script(
        "return document.getElementById('status').textContent + ' | first: ' + "
        "(document.querySelector('#results .hit') || {dataset: {}}).dataset.id")


# Every host name but 127.0.0.1 unresolvable: the browser is offline for anything but the server.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",)
OPERATIONS = {("GET", "/api/health"), ("GET", "/api/info"), ("POST", "/api/search"), ("GET", "/api/images/{image_id}"),
              ("GET", "/api/images/{image_id}/thumb"), ("POST", "/api/images")}


def test_the_api_docs_load_with_the_network_off(server):
    """/docs (Swagger UI) lists every operation in a browser that can reach only the server."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser(*OFFLINE)
    try:
        wait = WebDriverWait(browser, 60)
        cdn = browser.execute_async_script(  # the setting works: a CDN cannot be reached from this browser
            "const done = arguments[0]; fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
            ".then(() => done('reached'), () => done('unreachable'));")
        assert cdn == "unreachable"
        browser.get(server.url + "/docs")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(OPERATIONS))
        listed = {(op.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
                   op.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
                  for op in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
        assert listed == OPERATIONS, listed
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(server.url + "/") for url in loaded), loaded
    finally:
        browser.quit()


# --- real sockets --------------------------------------------------------------------------------

def test_a_stalled_client_does_not_block_a_search(server):
    stalled = []
    for partial in (b"", b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(partial)
        stalled.append(s)
    try:
        first = _ids(server.url)[0]
        status, answer = _request(server.url + "/api/search", {"id": str(first), "k": "3"}, timeout=60)
        assert status == 200 and answer["results"][0]["id"] == first
    finally:
        for s in stalled:
            s.close()


def test_concurrent_searches_while_uploads_are_added(server, built):
    _, photos = built
    before = _request(server.url + "/api/info")[1]["images"]
    query = serve_collection.query("paris_louvre_000081")[0].read_bytes()
    extra = sorted((serve_collection.benchmark()[0]).glob("paris_moulinrouge_*.jpg"))[-3:]
    ids = _ids(server.url)

    def search(i: int):
        if i % 2:
            return _request(server.url + "/api/search", {"id": str(ids[i % len(ids)]), "k": "5"})
        return _request(server.url + "/api/search", {"k": "5"}, [("file", "q.jpg", query)])

    def upload(path: Path):
        return _request(server.url + "/api/images", {}, [("files", path.name, path.read_bytes())], timeout=120)

    with ThreadPoolExecutor(8) as pool:
        uploads = [pool.submit(upload, p) for p in extra]
        searches = list(pool.map(search, range(24)))
        uploaded = [u.result() for u in uploads]
    assert all(s == 200 for s, _ in searches), [a for s, a in searches if s != 200]
    assert all(s == 200 for s, _ in uploaded), [a for s, a in uploaded if s != 200]
    assert _request(server.url + "/api/info")[1]["images"] == before + 3
    for path, (_, answer) in zip(extra, uploaded):
        status, found = _request(server.url + "/api/search", {"k": "1"}, [("file", path.name, path.read_bytes())])
        assert found["results"][0]["path"] == answer["added"][0] and found["results"][0]["score"] > 0.999


def test_a_server_killed_while_adding_an_upload_leaves_a_readable_index(server, built):
    """Runs last: it kills the module's server (SIGKILL) just after the upload is saved, while the index adds it."""
    from deepret.index import Index

    index_dir, photos = built
    before = _request(server.url + "/api/info")[1]["images"]
    uploads = photos / "uploads"

    def saved() -> set[Path]:  # finished uploads (atomic writes show up as hidden .tmp files first)
        return {p for p in uploads.iterdir() if not p.name.startswith(".")} if uploads.exists() else set()

    known = saved()
    photo = serve_collection.query("paris_defense_000056")[0].read_bytes()
    sender = threading.Thread(target=lambda: _swallow(
        lambda: _request(server.url + "/api/images", {}, [("files", "d.jpg", photo)], timeout=60)), daemon=True)
    sender.start()
    deadline = time.monotonic() + 60
    while not saved() - known:
        assert time.monotonic() < deadline, "the upload was never saved"
        time.sleep(0.002)
    server.proc.kill()
    server.proc.wait()
    sender.join(timeout=30)
    with Index.open(index_dir) as index:
        assert len(index) in (before, before + 1)
        some = index.search(serve_collection.query()[0], k=3).hits[0].id
        hits = index.search_id(some, k=3).hits
        assert hits[0].id == some and len(hits) == 3


def _swallow(call):
    with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
        call()
