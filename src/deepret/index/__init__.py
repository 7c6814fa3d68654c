"""Index a photo collection and search it with any image (SQLite catalogue + FAISS or Milvus vectors).

Names are imported from their modules on first use (deepret.lazy), so `deepret index info` reads a
catalogue without loading torch."""
from deepret.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "deepret.index.index": ("Index", "SearchHit", "SearchResult", "build_index"),
    "deepret.index.photos": ("scan",),
    "deepret.index.update": ("UpdateReport",),
})
