"""`deepret serve`: the web app and HTTP API over an index."""
from __future__ import annotations

from deepret.errors import DeepretError


def cmd_serve(args) -> int:
    from deepret.serve import serve

    if args.max_upload_mb <= 0:
        raise DeepretError(f"--max-upload-mb {args.max_upload_mb:g}: give a size in MB above 0")
    serve(args.index, host=args.host, port=args.port, token=args.token, allow_uploads=args.allow_uploads,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), device=args.device,
          precision=args.precision, engine=args.engine)
    return 0
