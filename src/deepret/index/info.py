"""What an index holds, read without its model: `deepret index info` (and Index.info) loads no torch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from deepret.errors import DeepretError
from deepret.index.backends import open_backend
from deepret.index.catalogue import Catalogue


def open_catalogue(index_dir: str | Path) -> tuple[Catalogue, dict[str, Any]]:
    """The catalogue of a finished index (quick integrity check done) and its meta; a one-line error
    naming what to run when it is damaged or its build has not finished."""
    catalogue = Catalogue(index_dir)
    try:
        problems = catalogue.quick_check()
        if problems:
            raise catalogue.damaged(problems[0])
        with catalogue.guard():
            meta = catalogue.all_meta()
    except BaseException:
        catalogue.close()
        raise
    if meta.get("state") != "ready":
        catalogue.close()
        raise DeepretError(f"the build of index {index_dir} has not finished: run the same `deepret index "
                           "build` again to resume it")
    return catalogue, meta


def describe(catalogue: Catalogue, meta: dict[str, Any], backend) -> dict[str, Any]:
    """Counts, model, settings, factory and bytes per vector of an open index (JSON-ready)."""
    return {"root": str(meta["root"]), "images": catalogue.count("ok"), "skipped": catalogue.skipped(),
            "not_indexed": meta.get("not_indexed"),  # {suffix: count}; None: counted by no build yet
            "model": meta["model"], "model_name": meta["model_name"], "fingerprint": meta["fingerprint"],
            "settings": meta["settings"], "dim": meta["dim"], "factory": meta["factory"], "backend": meta["backend"],
            "uri": meta.get("uri"), "bytes_per_vector": backend.bytes_per_vector()}


def read_info(index_dir: str | Path) -> dict[str, Any]:
    """`describe` of the index at `index_dir`, opened and closed here (vector file checked as on open)."""
    catalogue, meta = open_catalogue(index_dir)
    try:
        backend = open_backend(catalogue)
        try:
            with catalogue.guard():
                return describe(catalogue, meta, backend)
        finally:
            backend.close()
    finally:
        catalogue.close()
