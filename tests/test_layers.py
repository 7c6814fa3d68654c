"""scripts/check_layers.py on small package trees written in tmp_path: cycles, upward imports, clean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # its subprocesses are a second each: no model, no data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_layers.py"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A package ``deepret`` under ``root`` with the given files (relative path -> source)."""
    package = root / "deepret"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def run(package: Path) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stdout.splitlines()


CLEAN = {
    "errors.py": "class DeepretError(Exception):\n    pass\n",
    "fileio.py": "from deepret.errors import DeepretError\n",
    "models/__init__.py": "from .network import Net\n",
    "models/network.py": "from deepret.errors import DeepretError\nfrom deepret.models import pooling\nNet = 1\n",
    "models/pooling.py": "",
    "extract.py": "from deepret.models import Net\nfrom deepret import fileio\n",
    "evaluate.py": "from deepret.extract import *\n",  # same layer, no cycle: fine
    "pipeline.py": "def run():\n    from deepret.extract import Net\n",
    "cli.py": "import deepret.pipeline\nfrom . import errors\n",
}


def test_clean_tree_passes(tmp_path):
    code, lines = run(write_tree(tmp_path, CLEAN))
    assert code == 0, lines
    assert lines == ["check_layers: deepret: imports point down, no cycles"]


def test_cycle_inside_a_function_is_found(tmp_path):
    tree = dict(CLEAN)
    tree["fileio.py"] = "def f():\n    from deepret import errors\n"
    tree["errors.py"] = "def g():\n    import deepret.fileio\n"
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 1
    cycles = [line for line in lines if line.startswith("cycle:")]
    assert len(cycles) == 1, lines
    assert cycles[0].startswith("cycle: deepret.errors -> deepret.fileio -> deepret.errors (")
    assert "errors.py:2" in cycles[0] and "fileio.py:2" in cycles[0]


def test_cycle_through_relative_imports_in_a_package(tmp_path):
    tree = dict(CLEAN)
    tree["models/pooling.py"] = "from .network import Net\n"
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 1
    assert [line.split(" (")[0] for line in lines if line.startswith("cycle:")] == [
        "cycle: deepret.models.network -> deepret.models.pooling -> deepret.models.network"]


def test_upward_import_is_found(tmp_path):
    tree = dict(CLEAN)
    tree["evaluate.py"] = "x = 1\n\ndef f():\n    from deepret.pipeline import run\n"  # nothing imports evaluate
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("upward: ")
    assert lines[0].endswith("evaluate.py:4: deepret.evaluate (layer 3) import of deepret.pipeline (layer 2)")


def test_type_checking_imports_are_listed_and_ignored_for_cycles(tmp_path):
    tree = dict(CLEAN)
    tree["models/pooling.py"] = ("from typing import TYPE_CHECKING\n"
                                 "if TYPE_CHECKING:\n    from deepret.models.network import Net\n")
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 0, lines
    assert any(line.startswith("type-only: ") and line.endswith(
        "pooling.py:3: deepret.models.pooling -> deepret.models.network") for line in lines), lines


def test_type_checking_import_still_has_to_point_down(tmp_path):
    tree = dict(CLEAN)
    tree["fileio.py"] = "import typing\nif typing.TYPE_CHECKING:\n    from deepret.cli import x\n"
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 1
    assert [line for line in lines if line.startswith("upward:")][0].endswith(
        "fileio.py:3: deepret.fileio (layer 4) type-only import of deepret.cli (layer 0)")


def test_unplaced_module_fails(tmp_path):
    tree = dict(CLEAN)
    tree["gadgets/__init__.py"] = ""
    code, lines = run(write_tree(tmp_path, tree))
    assert code == 1
    assert lines == ["unassigned: deepret.gadgets has no layer: add it to LAYERS in scripts/check_layers.py"]


@pytest.mark.fast
def test_deepret_itself_points_down_without_cycles():
    code, lines = run(SCRIPT.parents[1] / "src" / "deepret")
    assert code == 0, [line for line in lines if not line.startswith("type-only:")]
