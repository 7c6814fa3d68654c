"""What an index is built with (its identity, as the catalogue's meta stores it), and the check that
a resumed build is the same build."""
from __future__ import annotations

from pathlib import Path

from deepret.errors import DeepretError
from deepret.extract import ExtractSettings
from deepret.index.catalogue import FORMAT
from deepret.models import RetrievalNet, model_fingerprint
from deepret.precision import interchangeable


def build_identity(net: RetrievalNet, model: str, weights: str, settings: ExtractSettings, factory: str,
                   backend: str, uri: str | None, root: Path, max_pixels: int | None) -> dict:
    """The catalogue meta of a build: where its photos are, which network and settings describe them, how
    the vectors are searched."""
    spec = str(Path(model).resolve()) if Path(model).is_file() else model
    if uri and "://" not in uri:
        uri = str(Path(uri).resolve())  # a Milvus Lite file
    return {"format": FORMAT, "root": str(root), "model": spec, "weights": weights, "model_name": net.meta["name"],
            "fingerprint": model_fingerprint(net), "settings": settings.to_dict(), "dim": int(net.dim),
            "factory": factory, "backend": backend, "uri": uri, "max_pixels": max_pixels}


def stored_settings(stored: dict) -> ExtractSettings:
    """The settings an index was built with (see ExtractSettings.from_dict)."""
    return ExtractSettings.from_dict(stored)


def check_same(meta: dict, want: dict, index_dir: Path, backbone: str | None) -> None:
    """Refuse to resume another build in this folder (the factory may change until the build is done).
    The precision may differ where both are interchangeable (a build begun in bf16 on one machine
    resumes in fp32 on another)."""
    keys = ("root", "fingerprint", "settings", "backend", "uri") + (("factory",) if meta.get("state") == "ready" else ())
    for key in keys:
        have, wanted = meta.get(key), want[key]
        if key == "settings" and isinstance(have, dict):
            have = stored_settings(have).to_dict()  # with fields added since
            if interchangeable(have["precision"], wanted["precision"], backbone):
                have, wanted = {**have, "precision": None}, {**wanted, "precision": None}
        if have != wanted:
            raise DeepretError(f"index {index_dir} was built with {key} {meta.get(key)!r}, not {want[key]!r}: "
                               f"give another --index folder, or update it with `deepret index update --index "
                               f"{index_dir}`")
