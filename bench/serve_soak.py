"""Soak test of `deepret serve`: many clients searching and uploading for a fixed time; per minute the
requests, errors, p50/p95 latency and the server's memory (RSS).

    python bench/serve_soak.py                                   # 10 minutes, 16 clients
    python bench/serve_soak.py --minutes 2 --clients 4 --md soak.md --json soak.json   # a short check

Builds an index of ../shared/data/rparis6k-mini (250 photos, efficientnet_lite0-gem, --size 256) in a
temporary folder and starts `python -m deepret serve --allow-uploads` on a free loopback port, as
bench/serve_load.py does. After a warm-up (each query once), --clients threads, each on its own
keep-alive connection, send requests until --minutes have passed: a search (the page's requests, in
turn: one of the 12 query photos uploaded with its official box, k=20; or an indexed photo by id,
k=20), or, with probability --upload-share, an upload of one of the 23 landmarks-mini photos
(POST /api/images: the index grows while it is searched). An error is any answer but a 200 with the
expected content, or a failed request. The server's RSS (and peak, VmHWM) is read from /proc every
second. Prints a markdown table (--md and --json write it); exit 1 on any error.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from serve_load import DATA, Server, build, queries


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(RSS, peak RSS) of process `pid` in MB, from /proc (None where there is none)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Soak:
    """The clients' shared record: (seconds since start, kind, latency ms, error or None) of every request."""

    def __init__(self, url: str, ids: list[int], upload_share: float, seconds: float) -> None:
        self.url, self.ids, self.upload_share = url, ids, upload_share
        self.qs, self.photos = queries(), sorted((DATA / "landmarks-mini").rglob("*.jpg"))
        self.records: list[tuple[float, str, float, str | None]] = []
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=120) as c:
            turn = seed
            while time.perf_counter() < self.end:
                turn += 1
                t = time.perf_counter()
                try:
                    if rng.random() < self.upload_share:
                        kind, error = "upload", self.upload(c, rng.choice(self.photos))
                    else:
                        kind, error = "search", self.search(c, rng, by_id=turn % 2 == 0)
                except httpx.HTTPError as exc:
                    kind, error = "request", repr(exc)[:200]
                done = time.perf_counter()
                with self.lock:
                    self.records.append((done - self.start, kind, (done - t) * 1e3, error))

    def search(self, c: httpx.Client, rng: random.Random, by_id: bool) -> str | None:
        if by_id:
            r = c.post("/api/search", data={"id": str(rng.choice(self.ids)), "k": "20"})
        else:
            name, data, box = rng.choice(self.qs)
            r = c.post("/api/search", files={"file": (name, data, "image/jpeg")}, data={"box": box, "k": "20"})
        ok = r.status_code == 200 and len(r.json()["results"]) == 20
        return None if ok else f"search {r.status_code} {r.text[:200]}"

    def upload(self, c: httpx.Client, path: Path) -> str | None:
        r = c.post("/api/images", files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])
        return None if r.status_code == 200 and len(r.json()["added"]) == 1 else f"upload {r.status_code} {r.text[:200]}"


def watch_memory(pid: int, stop: threading.Event, start: float, samples: list) -> None:
    while not stop.is_set():
        mem = rss_mb(pid)
        if mem:
            samples.append((time.perf_counter() - start, *mem))
        stop.wait(1.0)


def per_minute(records: list, samples: list, minutes: int) -> list[dict]:
    rows = []
    for m in range(minutes):
        mine = [r for r in records if m * 60 <= r[0] < (m + 1) * 60]
        searches = np.array([r[2] for r in mine if r[1] == "search"])
        uploads = np.array([r[2] for r in mine if r[1] == "upload"])
        mem = [s for s in samples if s[0] < (m + 1) * 60]
        rows.append({
            "minute": m + 1, "searches": len(searches), "uploads": len(uploads),
            "errors": sum(r[3] is not None for r in mine),
            "search_p50_ms": _pct(searches, 50), "search_p95_ms": _pct(searches, 95),
            "upload_p50_ms": _pct(uploads, 50), "upload_p95_ms": _pct(uploads, 95),
            "rss_mb": round(mem[-1][1], 1) if mem else None})
    return rows


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def markdown(result: dict) -> str:
    head = ("| minute | searches | uploads | errors | search p50 ms | search p95 ms | upload p50 ms | upload p95 ms "
            "| server RSS MB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = "".join(f"| {r['minute']} | {r['searches']} | {r['uploads']} | {r['errors']} | {_cell(r['search_p50_ms'])} | "
                   f"{_cell(r['search_p95_ms'])} | {_cell(r['upload_p50_ms'])} | {_cell(r['upload_p95_ms'])} | "
                   f"{_cell(r['rss_mb'])} |\n" for r in result["minutes"])
    s = result["summary"]
    return (head + rows + f"\n{s['clients']} clients, {s['minutes']:g} min: {s['searches']} searches, {s['uploads']} "
            f"uploads, **{s['errors']} errors**; index {s['images_start']} -> {s['images_end']} photos; server RSS "
            f"{_cell(s['rss_start_mb'])} MB after the warm-up, {_cell(s['rss_end_mb'])} MB at the end (peak "
            f"{_cell(s['rss_peak_mb'])} MB); {s['machine']}.\n")


def _cell(v) -> str:
    return "" if v is None else f"{v:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (default 10)")
    ap.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    ap.add_argument("--upload-share", type=float, default=0.05, help="share of requests that are uploads (default 0.05)")
    ap.add_argument("--size", type=int, default=256, help="the index's image size (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="deepret-serve-soak-") as tmp:
        work = Path(tmp)
        server = Server(build(work, args.size), True, work / "server.log")
        try:
            qs = queries()
            with httpx.Client(base_url=server.url, timeout=120) as c:
                for name, data, box in qs:  # warm-up: every query shape once
                    c.post("/api/search", files={"file": (name, data, "image/jpeg")}, data={"box": box, "k": "20"})
                ids, more = [], True
                while more:  # every indexed photo's id, a page of 100 at a time
                    page = c.post("/api/search", files={"file": qs[0][:2]}, data={"k": "100", "offset": str(len(ids))}).json()
                    ids, more = ids + [h["id"] for h in page["results"]], page["more"]
                images_start = c.get("/api/info").json()["images"]
            soak = Soak(server.url, ids, args.upload_share, args.minutes * 60)
            samples, stop = [], threading.Event()
            rss_start = rss_mb(server.proc.pid)
            watcher = threading.Thread(target=watch_memory, args=(server.proc.pid, stop, soak.start, samples), daemon=True)
            watcher.start()
            clients = [threading.Thread(target=soak.client, args=(args.seed * 1000 + i,)) for i in range(args.clients)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            stop.set()
            watcher.join()
            rss_end = rss_mb(server.proc.pid)
            images_end = httpx.get(server.url + "/api/info", timeout=60).json()["images"]
            log_tail = (work / "server.log").read_text(errors="replace")[-2000:]
        finally:
            server.stop()
    records = soak.records
    errors = [r[3] for r in records if r[3] is not None]
    minutes = max(1, int(np.ceil(args.minutes)))
    result = {
        "minutes": per_minute(records, samples, minutes),
        "summary": {"clients": args.clients, "minutes": args.minutes, "upload_share": args.upload_share,
                    "searches": sum(r[1] == "search" for r in records), "uploads": sum(r[1] == "upload" for r in records),
                    "errors": len(errors), "first_errors": errors[:5], "images_start": images_start, "images_end": images_end,
                    "rss_start_mb": rss_start and round(rss_start[0], 1), "rss_end_mb": rss_end and round(rss_end[0], 1),
                    "rss_peak_mb": rss_end and round(rss_end[1], 1),
                    "machine": f"{os.cpu_count()} CPUs, 1-min load average at the end {os.getloadavg()[0]:.1f}"}}
    table = markdown(result)
    print(table)
    if args.md:
        args.md.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if errors:
        print(f"{len(errors)} errors, e.g. {errors[0]}\nserver log tail:\n{log_tail}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
