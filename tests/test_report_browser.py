"""The study report in a real browser: headless Chromium loads report.html and every image in it.

Needs Debian's chromium + chromium-driver and the selenium package; skips with the reason where they
are missing, but fails under CI=true.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from deepret.study.report import write_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run")


def _browser(*flags: str):
    """A headless Chromium WebDriver (with extra command-line `flags`), or skip (fail in CI) saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [what for what, ok in (("chromium", chromium), ("chromedriver (chromium-driver)", driver),
                                     ("the selenium package", webdriver)) if not ok]
    if missing:
        message = (f"browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver; "
                   "pip install selenium")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, *flags):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def _results(out: Path) -> dict:
    """A two-step results dict whose figures are small real PNGs under out/figures."""
    steps = []
    for step, colour in (("1a", "red"), ("1f", "blue")):
        figures = {}
        for kind in ("topk", "tsne", *(("tsne_unlabeled", "triplets") if step == "1f" else ())):
            rel = f"figures/{step}-{kind}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), colour).save(out / rel)
            figures[kind] = rel
        steps.append({"step": step, "title": f"step {step}", "question": "Does it help?", "model": "AlexNet fc7",
                      "network": "efficientnet_lite0-spoc", "backbone": "efficientnet_lite0", "standin": True,
                      "weights": "efficientnet_lite0 (ImageNet) standing in for AlexNet", "scales": [1.0],
                      "dim": 1280, "map": {"old": 70.5}, "query_ap": 88.0, "query_ap_protocol": "old",
                      "figures": figures, "notes": ["a note"]})
    return {"dataset": "oxford5k-mini", "query": 0, "query_name": "all_souls_000013", "protocols": ["old"],
            "config": {"size": 128}, "command": "deepret study --size 128", "wall_s": 1.0, "steps": steps}


def test_every_image_of_the_report_loads_in_chromium(tmp_path):
    report = write_report(_results(tmp_path), tmp_path / "report.html")
    browser = _browser()
    try:
        browser.get(report.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        title = browser.title
    finally:
        browser.quit()
    assert title == "deepret study on oxford5k-mini"
    assert len(images) == 6
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"images that did not load: {broken}"
