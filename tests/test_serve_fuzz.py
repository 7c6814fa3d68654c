"""Fuzzing the live web app from its own OpenAPI schema (schemathesis): every operation, valid and invalid
requests, each sent with the token and without it; no answer is a 5xx and every 4xx is JSON with a
one-line `detail`.

The app (with a token and uploads on) runs under uvicorn on a free loopback port in a thread of this
process, over the index of a small collection of real Paris photos. Fixed seed (Hypothesis derandomized)
and a bounded number of cases per operation and mode: the same requests every run.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
import requests
import schemathesis  # the test extra: CI has it
import serve_collection
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from deepret.serve import create_app

TOKEN = "fuzz-token"
CASES = 60  # per operation and generation mode: 6 operations x 2 modes x 60, each sent twice
OPERATIONS = 6


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The URL of the app under uvicorn, ready (model loaded)."""
    import uvicorn

    from deepret.extract import ExtractSettings
    from deepret.index import build_index

    tmp = tmp_path_factory.mktemp("serve-fuzz")
    jpg, _ = serve_collection.benchmark()
    (tmp / "photos").mkdir()
    for name in serve_collection.QUERIES:
        shutil.copy2(jpg / f"{name}.jpg", tmp / "photos" / f"{name}.jpg")
    build_index(tmp / "photos", tmp / "index", model="efficientnet_lite0-gem",
                settings=ExtractSettings(size=serve_collection.SIZE), progress=False).close()
    app = create_app(tmp / "index", token=TOKEN, allow_uploads=True, max_upload_bytes=1024 * 1024)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not get ready in 120 s"
        try:
            if requests.get(url + "/api/health", headers=_auth(), timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def _auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def _assert_answer(response, case) -> None:
    what = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.content[:300]!r}"
    assert response.status_code < 500, what
    if response.status_code >= 400:
        content_type = response.headers.get("content-type") or [""]  # schemathesis: a list per header
        assert content_type[0].startswith("application/json"), what
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail and len(detail) < 400, what


def _fuzzer(operation, mode, live: str, seen: dict):
    """A Hypothesis test sending CASES generated requests of `operation`, with the token and without."""

    @settings(max_examples=CASES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        with_token = case.call(base_url=live, headers=_auth(), timeout=60)
        _assert_answer(with_token, case)
        without = case.call(base_url=live, timeout=60)
        _assert_answer(without, case)
        assert without.status_code == 401, f"{case.method} {case.formatted_path} answered without the token"
        seen.setdefault(operation.label, set()).add(with_token.status_code)

    return fuzz


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_fuzzed_requests_never_get_a_5xx_and_every_4xx_is_json(live, mode):
    schema = schemathesis.openapi.from_url(live + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) == OPERATIONS, [op.label for op in operations]
    seen = {}

    impossible = set()  # operations without parameters or body have no invalid request to make
    for operation in operations:
        try:
            _fuzzer(operation, mode, live, seen)()
        except Unsatisfiable:
            impossible.add(operation.label)
    assert impossible <= ({"GET /api/health", "GET /api/info"} if mode == GenerationMode.NEGATIVE else set()), impossible
    assert set(seen) == {op.label for op in operations} - impossible
    statuses = set().union(*seen.values())
    assert any(400 <= s < 500 for s in statuses), seen  # the invalid requests were refused
    if mode == GenerationMode.POSITIVE:
        assert 200 in statuses, seen
    assert requests.get(live + "/api/health", headers=_auth(), timeout=10).json()["status"] == "ready"
