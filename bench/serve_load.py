"""Load test of `deepret serve` on 127.0.0.1: one client against 8 concurrent clients, same server, same run.

    python bench/serve_load.py                       # 200 searches from 8 clients vs 30 from one, 3 rounds
    python bench/serve_load.py --uploads             # the same, with photos uploaded in parallel

Builds an index of ../shared/data/rparis6k-mini/jpg (250 real Paris photos; efficientnet_lite0-gem,
--size 256) in a temporary folder, starts `python -m deepret serve --index ... --port <free>` (plus
--allow-uploads with --uploads) in a subprocess and waits for /api/health. A search is POST
/api/search with one of the 12 query photos uploaded with its official box, k=20 (the page's
request); a warm-up runs each query once. Phases, interleaved --rounds times: `single` (one
client, --single searches in a row) and `concurrent` (--clients threads with their own keep-alive
connection, --searches in all); with
--uploads, one more thread adds the 23 photos of ../shared/data/landmarks-mini one by one
(POST /api/images) during each concurrent phase. Prints per phase: requests, errors (any non-200),
p50/p95 latency and searches/s, and the concurrent/single ratios (each round's concurrent phase
against that round's single phase, median over rounds); zero errors is required (exit 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def build(work: Path, size: int) -> Path:
    """An index of rparis6k-mini's photos (copied: uploads go into the collection) at `size`."""
    import shutil

    from deepret.extract import ExtractSettings
    from deepret.index import build_index

    photos = work / "photos"
    shutil.copytree(DATA / "rparis6k-mini" / "jpg", photos)
    build_index(photos, work / "index", model="efficientnet_lite0-gem", settings=ExtractSettings(size=size),
                progress=True).close()
    return work / "index"


def queries() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, 'x1,y1,x2,y2') of the 12 rparis6k-mini queries."""
    with open(DATA / "rparis6k-mini" / "gnd_rparis6k-mini.pkl", "rb") as f:
        gnd = pickle.load(f)
    out = []
    for name, q in zip(gnd["qimlist"], gnd["gnd"]):
        path = DATA / "rparis6k-mini" / "jpg" / f"{name}.jpg"
        out.append((path.name, path.read_bytes(), ",".join(f"{v:.1f}" for v in q["bbx"])))
    return out


class Server:
    def __init__(self, index: Path, uploads: bool, log: Path, engine: str = "auto") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "deepret", "serve", "--index", str(index), "--port", str(self.port),
               "--engine", engine]
        self.proc = subprocess.Popen(cmd + (["--allow-uploads"] if uploads else []), env=env,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_phase(url: str, qs: list, n: int, clients: int, uploads: list[Path] | None) -> dict:
    """n searches from `clients` threads (each its own connection); uploads in one more thread."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(n))
    stop_uploads = threading.Event()
    upload_stats = {"ok": 0, "errors": [], "latency_ms": []}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for i in counter:
                name, data, box = qs[i % len(qs)]
                t = time.perf_counter()
                try:
                    r = c.post("/api/search", files={"file": (name, data, "image/jpeg")},
                               data={"box": box, "k": "20"})
                    ok = r.status_code == 200 and len(r.json()["results"]) == 20
                    why = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                with lock:
                    latencies.append((time.perf_counter() - t) * 1e3)
                    if not ok:
                        errors.append(why)

    def uploader() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for path in uploads or []:
                if stop_uploads.is_set():
                    return
                t = time.perf_counter()
                r = c.post("/api/images", files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])
                upload_stats["latency_ms"].append((time.perf_counter() - t) * 1e3)
                if r.status_code == 200:
                    upload_stats["ok"] += 1
                else:
                    upload_stats["errors"].append(f"{r.status_code} {r.text[:200]}")

    up = threading.Thread(target=uploader) if uploads else None
    start = time.perf_counter()
    if up:
        up.start()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    stop_uploads.set()
    if up:
        up.join()
    lat = np.array(latencies)
    return {"clients": clients, "searches": len(lat), "errors": errors, "wall_s": wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "searches_per_s": len(lat) / wall, **({"uploads": upload_stats} if uploads else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searches", type=int, default=200, help="searches per concurrent phase (default 200)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--single", type=int, default=30, help="searches per single-client phase (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="single/concurrent pairs, interleaved (default 3)")
    ap.add_argument("--uploads", action="store_true", help="upload landmarks-mini photos during concurrent phases")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--engine", default="auto", help="the server's engine (auto: OpenVINO on the CPU; torch)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="deepret-serve-load-") as tmp:
        work = Path(tmp)
        index = build(work, args.size)
        server = Server(index, args.uploads, work / "server.log", args.engine)
        try:
            qs = queries()
            extra = sorted((DATA / "landmarks-mini").rglob("*.jpg"))
            run_phase(server.url, qs, len(qs), 1, None)  # warm-up: every query shape once
            phases = []
            for r in range(args.rounds):
                phases.append({"phase": "single", "round": r, **run_phase(server.url, qs, args.single, 1, None)})
                batch = extra[r::args.rounds] if args.uploads else None
                phases.append({"phase": "concurrent", "round": r,
                               **run_phase(server.url, qs, args.searches, args.clients, batch)})
            images = httpx.get(server.url + "/api/info").json()["images"]
        finally:
            server.stop()
    single = [p for p in phases if p["phase"] == "single"]
    conc = [p for p in phases if p["phase"] == "concurrent"]
    print(f"\nmachine: {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}; index of {images} images")
    print("| phase | round | clients | searches | errors | p50 ms | p95 ms | searches/s | uploads ok/errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in phases:
        up = p.get("uploads")
        ups = f"{up['ok']}/{len(up['errors'])}" if up else ""
        print(f"| {p['phase']} | {p['round']} | {p['clients']} | {p['searches']} | {len(p['errors'])} | "
              f"{p['p50_ms']:.0f} | {p['p95_ms']:.0f} | {p['searches_per_s']:.2f} | {ups} |")
    # each concurrent phase against the single-client phase just before it (the nearest in time), median of rounds
    ratio = float(np.median([c["searches_per_s"] / s["searches_per_s"] for s, c in zip(single, conc)]))
    p50 = float(np.median([c["p50_ms"] / s["p50_ms"] for s, c in zip(single, conc)]))
    print(f"\nconcurrent/single (median over rounds of each round's ratio): searches/s x{ratio:.2f}, "
          f"p50 latency x{p50:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"phases": phases, "throughput_ratio": ratio, "p50_ratio": p50}, indent=2))
    bad = sum(len(p["errors"]) for p in phases) + sum(len(p.get("uploads", {}).get("errors", [])) for p in phases)
    if bad:
        print(f"{bad} errors, e.g. {next(e for p in phases for e in p['errors'] + p.get('uploads', {}).get('errors', []))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
