"""Search and indexing speed of deepret.index, each figure against a baseline run in the same process.

    python bench/search_speed.py --n 100000 --queries 1000 --photos 40 --json search_speed.json

1. exact search on N synthetic L2-normalised 512-d vectors (see "The synthetic data" below; the
   queries are held-out draws of the same mixture): deepret's FAISS backend (an index written and
   loaded the way `deepret index` does it) against bare faiss.IndexFlatIP and a numpy matrix product
   + argpartition (over query batches, so that its score block stays below ~1 GB), top-10, all
   queries in one call, interleaved, best of --repeat;
2. every factory of the issue through deepret.vectors.VectorIndex: build time (training on a
   --train subsample + adding), bytes per vector, queries/s and recall@10 against exact search;
3. index build on real photos (rparis6k-mini): `build_index` images/s against bare extraction
   (get_model + extract) of the same files at the same settings, interleaved;
4. an update that adds one photo to an index holding N 1280-d vectors: its time against rewriting
   the vector file from the stored descriptors (the cheapest full rebuild, no extraction), whether
   the vector file was rewritten, and how many stored vectors the searcher re-read.

The synthetic data: x = normalise(c + TAU * (e * s) R), c one of 1000 random unit cluster centres,
e standard normal, s a power-law spectrum (s_j ~ j^-1/2, |s| = 1: an effective dimension of ~30 of
the 512) and R a random rotation. Image descriptors are like that: clustered (landmarks, scenes),
their variance concentrated in a few dozen directions, and a query's nearest neighbours clearly
closer than the rest (at N = 100k the mean cosine is ~0.68 to the nearest, ~0.6 to the 10th, ~0 to
a random vector). An earlier version added isotropic noise of norm 2.4 to the unit centres: the nearest
neighbour was barely closer than any vector of its cluster (cosine 0.25 against 0.15), a setting
where no approximate index reaches a high recall and that does not look like real descriptors.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from deepret.extract import ExtractSettings, extract
from deepret.index import build_index
from deepret.index.backends import FaissBackend
from deepret.index.catalogue import Catalogue
from deepret.models import DEFAULT_MODEL, get_model
from deepret.vectors import VectorIndex

FACTORIES = [("Flat", ""), ("HNSW32", "efSearch=64"), ("IVF1024,Flat", "nprobe=16"), ("IVF1024,PQ32", "nprobe=16"),
             ("OPQ32,IVF1024,PQ32", "nprobe=16")]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


TAU = 1.0  # noise norm against the unit cluster centres: a cluster's members at cosine ~0.5 of each other
NUMPY_BLOCK = 1 << 26  # query-by-database scores per numpy step: 256 MB of float32 (+ 512 MB of indices)


class Mixture:
    """The clustered, anisotropic mixture of the module docstring; draws are independent."""

    def __init__(self, dim: int, rng: np.random.Generator, clusters: int = 1000) -> None:
        self.rng = rng
        self.centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centers /= np.linalg.norm(self.centers, axis=1, keepdims=True)
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        s = 1.0 / np.sqrt(np.arange(1, dim + 1))
        self.spectrum = (s / np.linalg.norm(s)).astype(np.float32)

    def draw(self, n: int, batch: int = 100_000) -> np.ndarray:
        out = np.empty((n, len(self.rotation)), np.float32)
        for a in range(0, n, batch):
            m = min(n, a + batch) - a
            noise = (self.rng.standard_normal((m, len(self.rotation)), dtype=np.float32) * self.spectrum) @ self.rotation
            x = self.centers[self.rng.integers(0, len(self.centers), m)] + TAU * noise
            out[a:a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def numpy_topk(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by matrix product + argpartition, a batch of queries at a time (bounded memory)."""
    step = max(1, NUMPY_BLOCK // len(xb))
    out = np.empty((len(xq), k), np.int64)
    for a in range(0, len(xq), step):
        s = xq[a:a + step] @ xb.T
        part = np.argpartition(s, len(xb) - k, axis=1)[:, len(xb) - k:]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out[a:a + step] = np.take_along_axis(part, order, 1)
    return out


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def fill_catalogue(cat: Catalogue, x: np.ndarray, first_id: int = 1, batch: int = 20000) -> None:
    for s in range(0, len(x), batch):
        ids = list(range(first_id + s, first_id + s + len(x[s:s + batch])))
        with cat.write() as db:
            db.executemany("INSERT INTO files (id, path, status) VALUES (?, ?, 'ok')", [(i, f"synthetic/{i}.jpg") for i in ids])
            Catalogue.store(db, ids, x[s:s + batch])
            Catalogue.bump(db)


def exact_search(xb, xq, k, repeat, tmp: Path) -> dict:
    cat = Catalogue(tmp / "exact", create=True)
    fill_catalogue(cat, xb)
    FaissBackend(cat.dir, "Flat", xb.shape[1]).publish(cat, force=True)
    ours = FaissBackend(cat.dir, "Flat", xb.shape[1])
    ours.refresh(cat)
    bare = faiss.IndexFlatIP(xb.shape[1])
    bare.add(xb)

    t = {"deepret": [], "faiss.IndexFlatIP": [], "numpy": []}
    for _ in range(repeat):  # interleaved
        t["deepret"].append(best(lambda: ours.search(xq, k), 1)[0])
        t["faiss.IndexFlatIP"].append(best(lambda: bare.search(xq, k), 1)[0])
        t["numpy"].append(best(lambda: numpy_topk(xb, xq, k), 1)[0])
    _, ids_ours = ours.search(xq, k)
    _, ids_bare = bare.search(xq, k)
    same = float(np.mean(ids_ours - 1 == ids_bare))
    numpy_same = float(np.mean(numpy_topk(xb, xq, k) == ids_bare))
    qps = {name: len(xq) / min(v) for name, v in t.items()}
    cat.close()
    return {"qps": qps, "deepret_vs_faiss": qps["deepret"] / qps["faiss.IndexFlatIP"],
            "deepret_vs_numpy": qps["deepret"] / qps["numpy"], "same_results": same,
            "numpy_same_results": numpy_same}, ids_bare


def factories(xb, xq, exact_ids, k, n_train, rng) -> list[dict]:
    rows = []
    train = xb[rng.choice(len(xb), min(n_train, len(xb)), replace=False)]
    for factory, params in FACTORIES:
        t = time.perf_counter()
        vi = VectorIndex(factory, xb.shape[1])
        vi.train(train)
        vi.add(xb, np.arange(len(xb)))
        build_s = time.perf_counter() - t
        vi.set_params(params)
        search_s, (_, ids) = best(lambda vi=vi: vi.search(xq, k), 2)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)]))
        rows.append({"factory": factory, "params": params, "build_s": build_s, "bytes_per_vector": vi.bytes_per_vector(),
                     "qps": len(xq) / search_s, "recall@10": recall})
        print(json.dumps(rows[-1]), flush=True)
    flat = rows[0]["qps"]
    for r in rows:
        r["speedup_vs_exact"] = r["qps"] / flat
    return rows


def photo_build(n_photos: int, size: int, repeat: int, tmp: Path) -> dict:
    """`index build` of rparis6k-mini's first photos on each engine, rounds interleaved, against the
    bare extraction of the same photos on the default engine (auto)."""
    photos = tmp / "photos"
    photos.mkdir()
    for p in sorted((DATA / "rparis6k-mini" / "jpg").glob("*.jpg"))[:n_photos]:
        shutil.copy(p, photos / p.name)
    paths = sorted(photos.iterdir())
    times: dict[str, list[float]] = {"bare": [], "index:torch": [], "index:auto": []}
    auto = ExtractSettings(size=size)
    for r in range(repeat):
        times["bare"].append(best(lambda: extract(get_model(DEFAULT_MODEL), paths, settings=auto, progress=False), 1)[0])
        for engine in ("torch", "auto"):
            settings = ExtractSettings(size=size, engine=engine)
            times[f"index:{engine}"].append(best(lambda r=r, e=engine, s=settings: build_index(
                photos, tmp / f"ix-{e}-{r}", settings=s, progress=False).close(), 1)[0])
    fastest = {k: min(v) for k, v in times.items()}
    return {"photos": len(paths), "size": size, "bare_img_s": len(paths) / fastest["bare"],
            "index_img_s": len(paths) / fastest["index:auto"], "ratio": fastest["bare"] / fastest["index:auto"],
            "index_torch_img_s": len(paths) / fastest["index:torch"],
            "auto_vs_torch": fastest["index:torch"] / fastest["index:auto"]}


def one_photo_update(n: int, tmp: Path) -> dict:
    photos = tmp / "upd"
    photos.mkdir()
    jpgs = sorted((DATA / "rparis6k-mini" / "jpg").glob("*.jpg"))
    for p in jpgs[:2]:
        shutil.copy(p, photos / p.name)
    index = build_index(photos, tmp / "upd-ix", settings=ExtractSettings(size=256), progress=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, index.meta["dim"])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cat = index.catalogue
    fill_catalogue(cat, x, first_id=10)
    t = time.perf_counter()
    index.backend.publish(cat, force=True)  # the vector file of N + 2 vectors, from the stored descriptors
    rebuild_s = time.perf_counter() - t
    index.refresh()
    file = tmp / "upd-ix" / cat.meta("base")["file"]
    stamp = file.stat().st_mtime_ns
    read = []
    real = Catalogue.vectors

    def counting(self, dim, after_seq=0, upto_seq=None):
        out = real(self, dim, after_seq, upto_seq)
        read.append(len(out[0]))
        return out

    Catalogue.vectors = counting
    shutil.copy(jpgs[5], photos / "new.jpg")
    t = time.perf_counter()
    report = index.add_files([photos / "new.jpg"])
    update_s = time.perf_counter() - t
    Catalogue.vectors = real
    found = index.search(photos / "new.jpg", k=1).hits[0].path == "new.jpg"
    out = {"vectors": len(index), "update_s": update_s, "rebuild_vector_file_s": rebuild_s,
           "update_vs_rebuild": update_s / rebuild_s, "added": report.added,
           "vector_file_rewritten": file.stat().st_mtime_ns != stamp, "stored_vectors_read": int(sum(read)),
           "new_photo_found_first": found}
    index.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--train", type=int, default=50_000, help="training subsample for IVF/PQ/OPQ")
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--update-n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--parts", default="search,photo_build,update",
                    help="what to measure: search (exact and the factories), photo_build, update")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    rng = np.random.default_rng(0)
    out = {"machine": platform.processor() or platform.machine(), "faiss": faiss.__version__,
           "threads": faiss.omp_get_max_threads(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="deepret-bench-") as tmp:
        tmp = Path(tmp)
        if "search" in parts:
            data = Mixture(args.dim, rng)
            xb, xq = data.draw(args.n), data.draw(args.queries)
            out["exact"], exact_ids = exact_search(xb, xq, 10, args.repeat, tmp)
            print(json.dumps(out["exact"]), flush=True)
            out["factories"] = factories(xb, xq, exact_ids, 10, args.train, rng)
            del xb
        if "photo_build" in parts:
            out["photo_build"] = photo_build(args.photos, args.size, args.repeat, tmp)
            print(json.dumps(out["photo_build"]), flush=True)
        if "update" in parts:
            out["update"] = one_photo_update(args.update_n, tmp)
            print(json.dumps(out["update"]), flush=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
