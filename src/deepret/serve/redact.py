"""Keeping the server's own paths out of what the app sends: paths inside the collection become relative
to it, any other absolute path keeps only its last name (`…/name`); names that are not UTF-8 (or hold
control characters) are shown escaped, as deepret.fileio.printable writes them."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from deepret.fileio import printable

# An absolute POSIX path in a message: a '/' not preceded by a name, a dot, a scheme colon or another '/',
# up to a space, a quote or a bracket. '1/2', 'image/jpeg' and 'uploads/x.jpg' are not matched.
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()<>\[\]{}]+")


class Redactor:
    """`text(s)` and `value(v)`: `s` (or every string in `v`) without the server's absolute paths."""

    def __init__(self, root: str | Path) -> None:
        roots = {os.path.abspath(root), os.path.realpath(root)} - {os.sep}
        self.roots = sorted(roots, key=len, reverse=True)  # the longer first: one may hold the other

    def text(self, text: str) -> str:
        for root in self.roots:
            text = text.replace(root + os.sep, "")
        return printable(ABSOLUTE.sub(_last_name, text), backslash=False)

    def value(self, value: Any) -> Any:
        """Strings redacted in nested dicts and lists (keys included); other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def _last_name(match: re.Match) -> str:
    name = match.group(0).rstrip("/.").rsplit("/", 1)[-1]
    return f"…/{name}" if name else "…"
