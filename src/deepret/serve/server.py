"""`deepret serve`: the web app under uvicorn, with a warning when it is reachable without a token."""
from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from deepret.serve.inputs import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS

TOKEN_ENV = "DEEPRET_TOKEN"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None, allow_uploads: bool = False) -> str | None:
    """The warning to print when the server is reachable from other machines without a token."""
    if token or is_loopback(host):
        return None
    can = "search and add photos to" if allow_uploads else "search and see every photo of"
    return (f"deepret: warning: serving on {host} without a token: anyone who can reach this machine can {can} "
            f"the collection; pass --token T or set ${TOKEN_ENV}")


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          allow_uploads: bool = False, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
          max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, device: str | None = None, precision: str = "auto",
          engine: str = "auto") -> None:
    """Run the app over the index at `index_dir` until interrupted (token from $DEEPRET_TOKEN if not given)."""
    import uvicorn

    from deepret.serve.app import create_app

    token = token or os.environ.get(TOKEN_ENV) or None
    warning = exposure_warning(host, token, allow_uploads)
    if warning:
        print(warning, file=sys.stderr)
    app = create_app(index_dir, token=token, allow_uploads=allow_uploads, max_upload_bytes=max_upload_bytes,
                     max_pixels=max_pixels, device=device, precision=precision, engine=engine)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5)
