"""Index a photo collection and search it with any image (SQLite catalogue + FAISS or Milvus vectors)."""
from deepret.index.index import Index, SearchHit, SearchResult, build_index
from deepret.index.photos import scan
from deepret.index.update import UpdateReport

__all__ = ["Index", "SearchHit", "SearchResult", "UpdateReport", "build_index", "scan"]
