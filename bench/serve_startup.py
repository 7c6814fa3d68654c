"""Start-up of `deepret serve` until its first search is answered, per engine and engine cache state.

    python bench/serve_startup.py --rounds 3 --json serve_startup.json

Builds an index of ../shared/data/landmarks-mini (23 real photos) with the default model at its
default size in a temporary folder, then, --rounds times in turn, starts `python -m deepret serve`
in a new process for each case and times (wall clock, from the process start) until /api/health
answers and until the first POST /api/search (a landmarks-mini photo, k=5) returns 200:
`openvino, cold` (an empty engine cache: the network is converted), `openvino, cached` (the model
converted by the case before is read and compiled) and `torch` (no conversion). Prints the medians
and the cold/cached and cached/torch ratios of time to the first search, measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = (("openvino, cold", "openvino", True), ("openvino, cached", "openvino", False), ("torch", "torch", False))


def start_and_search(index: Path, engine: str, cache: Path, query: Path, log: Path) -> tuple[float, float]:
    """(seconds to /api/health, seconds to the first search's answer) of a new server process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DEEPRET_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deepret", "serve", "--index", str(index), "--port", str(port),
                             "--engine", engine], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - t0 > 600:
                raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        health = time.perf_counter() - t0
        r = httpx.post(url + "/api/search", files={"file": (query.name, query.read_bytes(), "image/jpeg")},
                       data={"k": "5"}, timeout=600)
        if r.status_code != 200:
            raise SystemExit(f"search failed: {r.status_code} {r.text[:300]}")
        return health, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from deepret.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = sorted(p for p in (DATA / "landmarks-mini").rglob("*.jpg"))
        build_index(DATA / "landmarks-mini", work / "index", progress=False).close()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in CASES}
        for r in range(args.rounds):
            for name, engine, cold in CASES:
                cache = work / f"cache-{r}"
                if cold and cache.exists():
                    shutil.rmtree(cache)
                times[name].append(start_and_search(work / "index", engine, cache, photos[r % len(photos)],
                                                    work / "server.log"))
                print(f"round {r + 1} {name}: health {times[name][-1][0]:.2f} s, first search {times[name][-1][1]:.2f} s",
                      flush=True)
    med = {name: (float(np.median([t[0] for t in ts])), float(np.median([t[1] for t in ts]))) for name, ts in times.items()}
    from deepret.precision import cpu_description

    print(f"\nCPU: {cpu_description()}, {os.cpu_count()} cores; medians of {args.rounds} rounds")
    print("| case | to /api/health s | to first search s |\n|---|---:|---:|")
    for name, (health, first) in med.items():
        print(f"| {name} | {health:.2f} | {first:.2f} |")
    cold, cached, torch_ = (med[name][1] for name, _, _ in CASES)
    print(f"first search: cold/cached {cold / cached:.2f}x, cached/torch {cached / torch_:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rounds": times, "medians": med}, indent=2))


if __name__ == "__main__":
    main()
