"""The Milvus vector backend (pymilvus): Milvus Lite for `--uri ./photos.db`, a server for http://HOST:19530.

The catalogue stays the source of truth: Milvus holds a copy of the stored descriptors under the
same int64 ids, kept in step by `publish` (rows appended since the last sync are upserted, removed
ids deleted; the synced `seq` is catalogue meta, so a sync interrupted at any moment is redone by
the next one). A collection is loaded when a process opens it (Milvus keeps a collection
'released' across restarts, Milvus Lite in every new process: search refuses a released one).
Results are mapped to photos through the catalogue, so an id Milvus still returns
for a moment after its photo was removed is dropped. Exact search (FLAT, inner product).
"""
from __future__ import annotations

import numpy as np

from deepret.errors import DeepretError
from deepret.index.catalogue import Catalogue

BATCH = 2000  # rows per upsert
INSTALL = "pip install 'deepret[milvus]'"  # the optional extra: pymilvus and milvus-lite


def check_installed(uri: str) -> None:
    """DeepretError naming the extra to install when pymilvus (or milvus-lite, for a local file) is missing."""
    import importlib.util

    needed = ["pymilvus"] + (["milvus_lite"] if "://" not in uri else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise DeepretError(f"the Milvus backend needs {' and '.join(n.replace('_', '-') for n in missing)}, which "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}")


def _client(uri: str):
    check_installed(uri)
    from pymilvus import MilvusClient

    try:
        return MilvusClient(uri)
    except Exception as exc:
        raise DeepretError(f"cannot reach Milvus at {uri} ({exc.__class__.__name__}: {exc}): start the server "
                           "or give a local file such as ./photos.db") from None


class MilvusBackend:
    """A Milvus collection named after the model's fingerprint, FLAT index, inner product."""

    name = "milvus"

    def __init__(self, uri: str, collection: str, dim: int) -> None:
        self.uri, self.collection, self.dim = uri, collection, int(dim)
        self._client = None
        self._loaded = False

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def _ensure_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        if self.client.has_collection(self.collection):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      consistency_level="Strong")

    def publish(self, cat: Catalogue, train: np.ndarray | None = None, force: bool = False) -> None:
        """Send the catalogue's changes since the last sync to Milvus."""
        with cat.read():
            synced = int(cat.meta("milvus_seq", 0))
            ids, x, seq = cat.vectors(self.dim, after_seq=synced)
            dead = cat.tombstones()
        self._ensure_collection()
        if len(dead):
            self.client.delete(self.collection, ids=[int(i) for i in dead])
        for s in range(0, len(ids), BATCH):
            self.client.upsert(self.collection, [{"id": int(i), "vector": v.tolist()}
                                                 for i, v in zip(ids[s:s + BATCH], x[s:s + BATCH])])
        with cat.write() as db:
            db.executemany("DELETE FROM tombstones WHERE id = ?", [(int(i),) for i in dead])
            count = int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
            Catalogue.set_meta(db, milvus_seq=seq, base={"file": None, "seq": seq, "generation": 0, "count": count})
            Catalogue.bump(db)

    def refresh(self, cat: Catalogue) -> None:
        """Milvus serves the latest synced state itself; the collection is loaded once per process."""
        if cat.meta("base") is None:
            raise DeepretError(f"index {cat.dir} has not been sent to Milvus yet: run `deepret index build` again")
        self._load(cat)

    def _load(self, cat: Catalogue) -> None:
        """Load the collection for search (a no-op when it is loaded already)."""
        if self._loaded:
            return
        if not self.client.has_collection(self.collection):
            raise DeepretError(f"Milvus at {self.uri} has no collection {self.collection} of index {cat.dir}: build "
                               "the index again into a new folder (the vectors are in its catalogue)")
        self.client.load_collection(self.collection)
        self._loaded = True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        res = self.client.search(self.collection, data=q.tolist(), limit=int(k), output_fields=["id"],
                                 search_params={"metric_type": "IP"})
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r, hits in enumerate(res):
            for j, hit in enumerate(hits[:k]):
                ids[r, j], scores[r, j] = int(hit["id"]), float(hit["distance"])
        return scores, ids

    def bytes_per_vector(self) -> float:
        """What Milvus stores per vector (float32 values and the int64 id), index overhead aside."""
        return float(self.dim * 4 + 8)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._loaded = False
