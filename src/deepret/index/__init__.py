"""Index a photo collection and search it with any image (SQLite catalogue + FAISS or Milvus vectors)."""
from deepret.index.build import UpdateReport, build_index, scan
from deepret.index.index import Index, SearchHit, SearchResult

__all__ = ["Index", "SearchHit", "SearchResult", "UpdateReport", "build_index", "scan"]
