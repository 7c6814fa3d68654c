"""Saved descriptors: database and query features with their image lists and the model's meta.

Files are written atomically and keyed by everything that changes them (network weights and meta,
extraction settings, dataset and image lists), so a second run with the same inputs reuses them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepret.errors import DeepretError
from deepret.models import RetrievalNet


@dataclass
class Features:
    """Descriptors of a benchmark: `db` (N, D) and `queries` (Q, D), rows L2-normalised."""

    db: np.ndarray
    queries: np.ndarray
    imlist: list[str]
    qimlist: list[str]
    meta: dict

    def save(self, path: str | Path) -> Path:
        """Write an .npz atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, db=self.db, queries=self.queries, imlist=np.array(self.imlist),
                 qimlist=np.array(self.qimlist), meta=np.array(json.dumps(self.meta)))
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["db"], z["queries"], z["imlist"].tolist(), z["qimlist"].tolist(),
                           json.loads(str(z["meta"])))
        except FileNotFoundError:
            raise DeepretError(f"feature file {path} not found: run `deepret extract` first") from None
        except Exception as exc:
            raise DeepretError(f"feature file {path} is unreadable ({exc.__class__.__name__}): delete it "
                               "and extract again") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def model_fingerprint(net: RetrievalNet) -> str:
    """sha1 of the network's meta (architecture, whitening, input) and every weight."""
    h = hashlib.sha1()
    stable_meta = {k: v for k, v in net.meta.items() if k not in ("checkpoint", "provenance", "deepret_version")}
    h.update(json.dumps(stable_meta, sort_keys=True).encode())
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$DEEPRET_CACHE, else ~/.cache/deepret."""
    return Path(os.environ.get("DEEPRET_CACHE", Path.home() / ".cache" / "deepret"))


def cache_path(cache_dir: Path, dataset: str, net: RetrievalNet, settings: dict, lists: tuple) -> Path:
    """Where the features of `dataset` under these inputs live."""
    key = hashlib.sha1(json.dumps([model_fingerprint(net), settings, list(map(list, lists))],
                                  sort_keys=True).encode()).hexdigest()[:16]
    safe_model = net.meta["name"].replace("/", "_")
    return Path(cache_dir) / "features" / dataset / f"{safe_model}-{key}.npz"

