"""Kill -9 of `deepret index update` at many moments, then open + verify + search; and the damages of
issue 20 (vector file scribbled, deleted, truncated; 8 KB scribbled over the catalogue), each repaired.

A small collection (real photos of ../shared/data/landmarks-mini copied to a temporary folder,
EfficientNet-Lite0-GeM at 128 px) gets photos added and removed before each update; the update runs
as its own process (`python -m deepret index update`) and is killed with SIGKILL either at an exact
moment (DEEPRET_FAULT, deepret.index.checks.fault_point: inside the catalogue transaction, after the
extraction, between committing the catalogue and publishing the vector file, after saving the vector
file, after switching to it) or after a random delay. After each kill the index must open, verify
clean, find each stored photo first, and hold either the photos it held before the update or exactly
the folder's (an update is all or nothing). A final update must give exactly the folder's photos.

Usage: python bench/kill_index.py [--kills 55] [--seed 0] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "landmarks-mini"
FAULTS = ("before-catalogue-commit", "after-extract", "after-catalogue-commit", "after-vector-save",
          "after-base-commit")


def update_process(ix: Path, fault: str | None, delay: float | None) -> tuple[int, float]:
    """(return code, seconds) of `deepret index update` killed at `fault` or after `delay` seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("DEEPRET_FAULT", None)
    if fault:
        env["DEEPRET_FAULT"] = fault
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deepret", "index", "update", "--index", str(ix), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read().decode()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"update failed ({proc.returncode}): {err[-2000:]}")
    return proc.returncode, time.perf_counter() - start


def indexed(index) -> set[str]:
    ids, _ = index.vectors()
    return {index.path_of(int(i)).name for i in ids}


def check(ix: Path, net, allowed: list[set[str]]) -> set[str]:
    """Open + verify + search; the indexed photos, which must be one of `allowed`."""
    from deepret.index import Index
    from deepret.index.integrity import verify

    problems = verify(ix)
    assert not problems, problems
    with Index.open(ix) as index:
        index.use_model(net)
        have = indexed(index)
        assert have in allowed, (sorted(have), [sorted(a) for a in allowed])
        ids, x = index.vectors()
        for i, v in zip(ids, x):
            hit = index.search_vector(v, k=1).hits[0]
            assert hit.id == int(i) and hit.score > 0.999, (hit, int(i))
        photo = next((p for p in map(index.path_of, map(int, ids)) if p.exists()), None)  # old state: maybe gone
        assert photo is None or index.search(photo, k=1).hits[0].path == photo.name
    return have


def mutate(photos: Path, pool: list[Path], rng: np.random.Generator) -> None:
    """Add 2-3 photos from the pool or remove 2 (more than 20% of the collection: a new vector file is due)."""
    present = sorted(photos.glob("*.jpg"))
    absent = [p for p in pool if not (photos / p.name).exists()]
    if absent and (len(present) < 7 or rng.random() < 0.5):
        for p in rng.choice(absent, size=min(len(absent), int(rng.integers(2, 4))), replace=False):
            shutil.copy(p, photos / p.name)
    else:
        for p in rng.choice(present, size=2, replace=False):
            Path(p).unlink()


def corruption_cases(photos: Path, ix: Path, work: Path, net) -> list[str]:
    """Each damage of issue 20 on a copy of the index: found by verify, repaired to the same results."""
    from deepret.index import Index
    from deepret.index.integrity import repair, verify

    def scribble(path: Path, n: int) -> None:
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size // 2 - n // 2)
            f.write(np.random.default_rng(7).bytes(n))

    damages = {"vector file: 1000 random bytes in its middle": lambda d: scribble(d / base_file, 1000),
               "vector file deleted": lambda d: (d / base_file).unlink(),
               "vector file truncated to 918 bytes": lambda d: os.truncate(d / base_file, 918),
               "catalogue: 8 KB of random bytes in its middle": lambda d: scribble(d / "catalogue.sqlite", 8192)}
    queries = sorted(photos.glob("*.jpg"))[:3]
    with Index.open(ix) as index:
        index.use_model(net)
        base_file = index.catalogue.meta("base")["file"]
        before = [[(h.path, round(h.score, 4)) for h in index.search(q, k=20).hits] for q in queries]
    lines = []
    for name, hurt in damages.items():
        copy = work / "damaged"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ix, copy, ignore=shutil.ignore_patterns("*-shm", "writer.lock"))
        hurt(copy)
        found = verify(copy)
        assert found and all("deepret index repair" in line for line in found), found
        done = repair(copy)
        assert verify(copy) == []
        with Index.open(copy) as index:
            index.use_model(net)
            after = [[(h.path, round(h.score, 4)) for h in index.search(q, k=20).hits] for q in queries]
        assert after == before, name
        lines.append(f"{name}: verify: {found[0].split(': run')[0]}; repair: {'; '.join(done.done)}; "
                     "verify clean, same results")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=55)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    os.environ.setdefault("DEEPRET_CACHE", tempfile.mkdtemp(prefix="kill-index-cache-"))
    from deepret.extract import ExtractSettings
    from deepret.index import Index, build_index

    work = args.work or Path(tempfile.mkdtemp(prefix="kill-index-"))
    photos, ix = work / "photos", work / "ix"
    all_photos = sorted(DATA.rglob("*.jpg"))
    photos.mkdir(parents=True)
    for p in all_photos[:8]:
        shutil.copy(p, photos / p.name)
    index = build_index(photos, ix, model="efficientnet_lite0-gem", settings=ExtractSettings(size=128), progress=False)
    net = index.load_model()
    index.close()
    rng = np.random.default_rng(args.seed)
    held = check(ix, net, [{p.name for p in photos.glob("*.jpg")}])
    _, last = update_process(ix, None, None)  # nothing to do: the fixed cost of an update process
    kills, by_fault, finished, runs = 0, dict.fromkeys(FAULTS, 0), 0, 0
    while kills < args.kills:
        mutate(photos, all_photos, rng)
        folder = {p.name for p in photos.glob("*.jpg")}
        fault = FAULTS[runs % len(FAULTS)] if runs % 3 != 2 else None
        # timed: anywhere in the last run's time (import, model load, extraction, commit, publish)
        delay = None if fault else float(rng.uniform(0.3, 1.0)) * last
        code, seconds = update_process(ix, fault, delay)
        if fault == "after-base-commit" or code == 0:
            last = seconds  # an update's whole time on the machine as it is now
        runs += 1
        if code == -signal.SIGKILL:
            kills += 1
            by_fault[fault or "timed"] = by_fault.get(fault or "timed", 0) + 1
        else:
            finished += 1
        held = check(ix, net, [held, folder])
        print(f"run {runs}: {fault or f'timed {delay:.1f}s'} -> {'killed' if code else 'finished'} "
              f"({seconds:.1f}s), index holds {len(held)} photos ({'new' if held == folder else 'old'} state)",
              flush=True)
    with Index.open(ix) as index:
        index.use_model(net)
        index.update()
    final = check(ix, net, [{p.name for p in photos.glob("*.jpg")}])
    print(f"{kills} kills survived in {runs} update runs ({finished} ran to the end before the kill): "
          + ", ".join(f"{k} {v}" for k, v in by_fault.items()))
    print(f"final update: the index holds exactly the folder's {len(final)} photos; verify clean")
    for line in corruption_cases(photos, ix, work, net):
        print(line)


if __name__ == "__main__":
    main()
