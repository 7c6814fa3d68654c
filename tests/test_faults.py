"""The failures of issue 20, each as users meet them: odd file names, a build killed before its identity,
a full disk, folders that cannot be written, absurd arguments, symlinks, outputs into missing folders, a
missing optional package, and every backend used from other processes than the one that built it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import require_data

from deepret.cli import main
from deepret.fileio import printable
from deepret.index.catalogue import Catalogue

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--model", "efficientnet_lite0-gem", "--size", "128", "--quiet", "--workers", "0"]
BAD = os.fsdecode(b"bad\xff\xfename.jpg")  # not UTF-8: Python's surrogate escapes
NEWLINE = "new\nline.jpg"


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m deepret ARGS` in a new process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deepret", *map(str, args)], capture_output=True, text=True,
                          env=env, errors="surrogateescape", timeout=600)


def one_line_error(stderr: str, *words: str) -> None:
    """stderr is one `deepret: error:` line (no traceback) holding `words`."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepret: error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def photos(folder: Path, n: int = 4, source: str = "landmarks-mini") -> list[Path]:
    """n real photos copied into `folder`."""
    found = sorted(require_data(source).rglob("*.jpg"))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for p in found:
        shutil.copy(p, folder / p.name)
    return sorted(folder / p.name for p in found)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only: skips with the reason elsewhere), unmounted in teardown."""
    mounted = []

    def mount(name: str, size: str = "30m", readonly: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): run as root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes with one file; returns the file (remove it to free the space)."""
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return filler


def test_names_that_are_not_utf8_or_hold_a_newline_are_indexed_and_shown_escaped(tmp_path, capsys):
    col = tmp_path / "col"
    first = photos(col, 3)[0]
    shutil.copy(first, col / BAD)
    shutil.copy(first, col / NEWLINE)
    (col / os.fsdecode(b"broken\xfe.jpg")).write_bytes(b"not a photo")
    ix = tmp_path / "ix"
    assert main(["index", "build", str(col), "--index", str(ix), *FAST]) == 0
    assert "5 images indexed, 1 skipped" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(ix), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 5 and [s["path"] for s in info["skipped"]] == ["broken\\xfe.jpg"]
    assert main(["index", "info", "--index", str(ix)]) == 0
    assert "\n  broken\\xfe.jpg: is corrupt" in capsys.readouterr().out
    # the photo is found by its own content under its own name, escaped: one result a line
    report = tmp_path / "r.json"
    assert main(["index", "search", "--index", str(ix), str(col / BAD), "--topk", "5", "--json", str(report)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[-1] == f"wrote {report}"
    shown = {line.split("\t")[2] for line in lines[:3]}  # the three copies score 1.0
    assert shown == {"bad\\xff\\xfename.jpg", "new\\nline.jpg", first.name}
    hits = json.loads(report.read_text())["hits"]
    assert {h["path"] for h in hits[:3]} == shown and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # stored losslessly: the catalogue gives back the very names, which open again
    cat = Catalogue(ix)
    try:
        names = set(cat.files())
    finally:
        cat.close()
    assert {BAD, NEWLINE} <= names and (col / BAD).read_bytes() == first.read_bytes()
    (col / BAD).unlink()
    (col / NEWLINE).unlink()
    assert main(["index", "update", "--index", str(ix), "--quiet"]) == 0
    assert "0 added, 0 changed, 2 removed" in capsys.readouterr().out


def test_printable_is_one_line_unambiguous_and_utf8():
    names = [BAD, NEWLINE, "a\\xff.jpg", "tab\t.jpg", "\x85c1.jpg", os.fsdecode(b"\x85c1.jpg"), "été.jpg"]
    shown = [printable(n) for n in names]
    assert shown[:4] == ["bad\\xff\\xfename.jpg", "new\\nline.jpg", "a\\\\xff.jpg", "tab\\t.jpg"]
    assert shown[4] == "\\u0085c1.jpg" and shown[5] == "\\x85c1.jpg" and shown[6] == "été.jpg"
    assert len(set(shown)) == len(names) and all("\n" not in s for s in shown)
    for s in shown:
        s.encode("utf-8")  # strict: no surrogate left


def test_a_build_that_died_before_its_identity_was_recorded_starts_cleanly(tmp_path, capsys):
    col, ix = tmp_path / "col", tmp_path / "ix"
    photos(col, 3)
    Catalogue(ix, create=True).close()  # what a build killed before committing its identity leaves
    assert main(["index", "build", str(col), "--index", str(ix), *FAST]) == 0
    assert "3 images indexed" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(ix)]) == 0
    assert f"root: {col}" in capsys.readouterr().out


def test_disk_full_during_build_and_update_is_one_line_and_the_rerun_completes(tmp_path, tmpfs):
    disk = tmpfs("disk")
    col, ix = tmp_path / "col", disk / "ix"
    all_photos = photos(tmp_path / "all", 90, "rparis6k-mini")
    col.mkdir()
    for p in all_photos[:60]:
        shutil.copy(p, col / p.name)
    filler = fill(disk, 150_000)
    done = cli("index", "build", col, "--index", ix, *FAST)
    assert done.returncode == 2
    one_line_error(done.stderr, "disk full writing index", "needs about", "MB are free", "run the same command again")
    filler.unlink()
    done = cli("index", "build", col, "--index", ix, *FAST)
    assert done.returncode == 0 and "60 images indexed" in done.stdout, done.stderr
    for p in all_photos[60:]:
        shutil.copy(p, col / p.name)
    filler = fill(disk, 60_000)
    done = cli("index", "update", "--index", ix, "--quiet")
    assert done.returncode == 2
    one_line_error(done.stderr, "disk full writing index", "MB are free")
    filler.unlink()
    done = cli("index", "info", "--index", ix, "--json")  # the old index is intact
    assert done.returncode == 0 and json.loads(done.stdout)["images"] == 60
    done = cli("index", "update", "--index", ix, "--quiet")
    assert done.returncode == 0 and "30 added" in done.stdout and "90 images" in done.stdout, done.stderr


def test_folders_that_cannot_be_written_are_one_line_errors(tmp_path, tmpfs, capsys):
    col = tmp_path / "col"
    photos(col, 2)
    readonly = tmpfs("readonly", size="1m", readonly=True)
    assert main(["index", "build", str(col), "--index", str(readonly / "ix"), *FAST]) == 2
    one_line_error(capsys.readouterr().err, "cannot write the index folder", "read-only file system")
    (tmp_path / "locked" / "writer.lock").mkdir(parents=True)
    assert main(["index", "build", str(col), "--index", str(tmp_path / "locked"), *FAST]) == 2
    one_line_error(capsys.readouterr().err, "writer.lock is a folder", "rmdir")
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(SystemExit) as exit_:  # refused while parsing: before any work
        main(["index", "build", str(col), "--index", str(tmp_path / "a-file"), *FAST])
    assert exit_.value.code == 2
    one_line_error(capsys.readouterr().err, "a-file is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "mine"


def test_an_absurd_size_is_refused_before_any_work(tmp_path, capsys):
    col, ix = tmp_path / "col", tmp_path / "ix"
    photos(col, 2)
    assert main(["index", "build", str(col), "--index", str(ix), *FAST, "--size", "99999999"]) == 2
    one_line_error(capsys.readouterr().err, "--size 99999999", "above 10000 px", "--max-pixels")
    # within a raised pixel limit, the memory of one batch decides (~700 GB here: no machine has it free)
    assert main(["index", "build", str(col), "--index", str(ix), *FAST, "--size", "60000",
                 "--max-pixels", "4000000000"]) == 2
    one_line_error(capsys.readouterr().err, "--size 60000", "GB of memory", "give --size")
    assert not ix.exists()  # nothing half-made


def test_a_symlink_out_of_the_collection_is_skipped_and_one_inside_is_indexed(tmp_path, capsys):
    col, ix = tmp_path / "col", tmp_path / "ix"
    inside = photos(col, 2)[0]
    outside = photos(tmp_path / "elsewhere", 4)[-1]
    (col / "link_in.jpg").symlink_to(inside.name)
    (col / "link_out.jpg").symlink_to(outside)
    assert main(["index", "build", str(col), "--index", str(ix), *FAST]) == 0
    capsys.readouterr()
    assert main(["index", "info", "--index", str(ix), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 3
    assert [s["path"] for s in info["skipped"]] == ["link_out.jpg"]
    assert info["skipped"][0]["reason"].startswith("symlink out of the collection")
    # its content is in no result
    assert main(["index", "search", "--index", str(ix), str(outside), "--topk", "5"]) == 0
    assert "link_out.jpg" not in capsys.readouterr().out


def test_outputs_into_a_missing_folder_are_refused_before_any_work(tmp_path, capsys, data_root):
    missing = tmp_path / "nonexistent" / "dir"
    for argv in (["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), *FAST, "--json",
                  str(missing / "out.json")],
                 ["index", "search", "--index", str(tmp_path), "q.jpg", "--figure", str(missing / "f.png")],
                 ["index", "build", str(tmp_path), "--index", str(missing / "ix")]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        one_line_error(capsys.readouterr().err, f"folder {missing} does not exist", "mkdir -p")
        assert not missing.parent.exists()
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), "--json", str(tmp_path)])
    one_line_error(capsys.readouterr().err, "is a folder: give a file name")


def test_a_missing_optional_package_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    col, ix = tmp_path / "col", tmp_path / "ix"
    photos(col, 2)
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as where the extra is not installed: import fails
    assert main(["index", "build", str(col), "--index", str(ix), *FAST, "--backend", "milvus",
                 "--uri", str(tmp_path / "m.db")]) == 2
    one_line_error(capsys.readouterr().err, "pymilvus", "pip install 'deepret[milvus]'")
    assert not ix.exists()


def _installed(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_every_backend_is_searched_and_updated_from_other_processes(tmp_path, backend):
    if backend == "milvus" and not _installed("pymilvus", "milvus_lite"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI installs the milvus extra (the test extra): pymilvus and milvus-lite are missing")
        pytest.skip("pymilvus and milvus-lite are not installed: pip install 'deepret[milvus]'")
    col, ix = tmp_path / "col", tmp_path / "ix"
    found = photos(tmp_path / "all", 5)
    col.mkdir()
    for p in found[:4]:
        shutil.copy(p, col / p.name)
    extra = ["--backend", "milvus", "--uri", str(tmp_path / "vectors.db")] if backend == "milvus" else []
    done = cli("index", "build", col, "--index", ix, *FAST, *extra)
    assert done.returncode == 0 and "4 images indexed" in done.stdout, done.stderr
    done = cli("index", "search", "--index", ix, found[1], "--topk", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split("\t")[::2] == ["1", found[1].name]
    shutil.copy(found[4], col / found[4].name)
    done = cli("index", "update", "--index", ix, "--quiet")
    assert done.returncode == 0 and "1 added" in done.stdout and "5 images" in done.stdout, done.stderr
    done = cli("index", "search", "--index", ix, found[4], "--topk", "1")
    assert done.returncode == 0 and done.stdout.split("\t")[2].strip() == found[4].name, done.stderr
    done = cli("index", "info", "--index", ix, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["backend"] == backend


def test_os_errors_read_as_one_line_with_the_file_and_what_to_do():
    import errno

    from deepret.cli import error_message

    denied = error_message(PermissionError(errno.EACCES, "Permission denied", f"/photos/{BAD}"))
    assert denied == "/photos/bad\\xff\\xfename.jpg: permission denied: give a path you may write, or change its permissions"
    full = error_message(OSError(errno.ENOSPC, "No space left on device", "/x/out.json"))
    assert full.startswith("/x/out.json: no space left on the device")
    assert "pip install 'deepret[milvus]'" in error_message(ModuleNotFoundError("no", name="milvus_lite"))
    assert error_message(MemoryError()).startswith("out of memory: give a smaller --size")
    assert error_message(ValueError("a bug")) is None  # a bug keeps its traceback
