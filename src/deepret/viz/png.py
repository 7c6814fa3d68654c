"""Writing figures: PNG, atomically (a reader sees the old file or the whole new one)."""
from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from deepret.fileio import atomic_write_bytes


def save_png(fig: Figure, out_path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Render `fig` to PNG on a white background and write it to `out_path` (folders created)."""
    out = Path(out_path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    atomic_write_bytes(out, buf.getvalue())
    return out
