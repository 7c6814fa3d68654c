"""deepret: instance-level image retrieval with CNN global descriptors."""
from __future__ import annotations

from typing import Any


def load(path):
    """Rebuild a saved retrieval network from its checkpoint (see deepret.models.load)."""
    from deepret.models import load as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: `import deepret` stays cheap
        from deepret.version import __version__

        return __version__
    raise AttributeError(f"module 'deepret' has no attribute {name!r}")
