"""Evaluation protocols of the Oxford/Paris benchmarks: which ground-truth keys are positives and
which are junk under the old protocol (ok/junk) and the revisited Easy/Medium/Hard ones.

A leaf module (it imports nothing of deepret but its errors): `deepret.evaluate` and
`deepret.datasets.revisitop` both take the definitions from here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepret.errors import DeepretError

OLD_PROTOCOLS = ("old",)
REVISITED_PROTOCOLS = ("easy", "medium", "hard")

# protocol -> (keys whose union are the positives, keys whose union is junk)
_PROTOCOL_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "old": (("ok",), ("junk",)),
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
OLD_KEYS = ("ok", "junk")                 # what every old-protocol gnd entry holds
REVISITED_KEYS = ("easy", "hard", "junk")  # what every revisited gnd entry holds


def protocols_of(gnd: Sequence[dict]) -> list[str]:
    """``["old"]`` for ok/junk ground truth, ``["easy", "medium", "hard"]`` for revisited."""
    if len(gnd) == 0:
        raise DeepretError("ground truth has no queries: pass the 'gnd' list of a gnd_*.pkl file")
    first = gnd[0]
    if all(k in first for k in ("easy", "hard")):
        return list(REVISITED_PROTOCOLS)
    if "ok" in first:
        return list(OLD_PROTOCOLS)
    raise DeepretError(
        f"ground truth entry has keys {sorted(first)}: expected 'ok'/'junk' (old protocol) "
        "or 'easy'/'hard'/'junk' (revisited); pass the 'gnd' list of a gnd_*.pkl file"
    )


def protocol_gnd(gnd: Sequence[dict], protocol: str) -> list[dict]:
    """Per query ``{'ok': positives, 'junk': junk}`` under ``protocol`` (old/easy/medium/hard)."""
    available = protocols_of(gnd)
    if protocol not in available:
        raise DeepretError(
            f"protocol {protocol!r} does not apply to this ground truth: choose one of {available}"
        )
    pos_keys, junk_keys = _PROTOCOL_KEYS[protocol]

    def union(entry: dict, keys: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([np.asarray(entry.get(k, ()), dtype=np.int64) for k in keys])

    return [{"ok": union(e, pos_keys), "junk": union(e, junk_keys)} for e in gnd]


def default_protocol(gnd_entry: dict) -> str:
    """'old' for ok/junk ground truth, 'medium' (easy+hard positive) for revisited."""
    return "old" if protocols_of([gnd_entry]) == ["old"] else "medium"
