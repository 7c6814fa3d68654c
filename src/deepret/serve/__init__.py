"""The web app and HTTP API over an index: `create_app(index_dir, ...)`, `serve(...)` (uvicorn)."""
from deepret.serve.app import create_app
from deepret.serve.server import serve

__all__ = ["create_app", "serve"]
