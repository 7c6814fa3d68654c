"""Retrieval networks: `create_model(name, weights=...)`, `load(path)`, `save(net, path)`.

The names are imported on first use (deepret.lazy): `from deepret.models import DEFAULT_MODEL` does
not load torch."""
from deepret.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "deepret.models.network": ("HEADS", "RetrievalNet", "create_model", "get_model", "load", "model_fingerprint",
                               "parse_name", "save"),
    "deepret.models.pooling": ("GeM", "MAC", "SPoC", "gem", "l2n", "mac", "spoc"),
    "deepret.models.registry": ("DEFAULT_MODEL", "list_models"),
})
