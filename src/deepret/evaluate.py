"""Retrieval evaluation that reproduces revisitop's ``compute_ap`` / ``compute_map`` exactly.

Conventions (as in revisitop):
- ``ranks`` has shape (n_db, n_queries); column q lists database indices, best first.
  A truncated ranking (fewer rows, e.g. a top-100 shortlist) is accepted as well.
- ``gnd`` is a list with one dict per query. Old protocol (Oxford5k, Paris6k): keys ``ok``
  (positives) and ``junk``. Revisited protocol (ROxford5k, RParis6k): keys ``easy``, ``hard``,
  ``junk``, evaluated under the Easy, Medium and Hard protocols.
- Reported numbers in :class:`EvalResult` are percentages; queries without positives get AP ``nan``
  and are left out of mAP and mP@k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepret.errors import DeepretError
from deepret.protocols import OLD_PROTOCOLS, REVISITED_PROTOCOLS, default_protocol, protocol_gnd, protocols_of  # noqa: F401
from deepret.search import rank


def average_precision(ranked_positive_positions: np.ndarray, n_positives: int) -> float:
    """AP of one query by the trapezoidal rule (revisitop ``compute_ap``).

    ``ranked_positive_positions`` are the sorted 0-based positions of the positives in the
    junk-free ranking; ``n_positives`` counts all positives, found or not.
    """
    r = np.asarray(ranked_positive_positions, dtype=np.float64)
    j = np.arange(r.size, dtype=np.float64)
    precision_0 = np.divide(j, r, out=np.ones_like(r), where=r > 0)  # 1 at rank 0
    precision_1 = (j + 1) / (r + 1)
    return float(np.sum((precision_0 + precision_1) / 2.0) / n_positives)


def _positive_positions(column: np.ndarray, positives, junk) -> np.ndarray:
    """Sorted 0-based positions of the positives after removing junk from the ranking."""
    pos = np.flatnonzero(np.isin(column, np.asarray(positives, dtype=np.int64)))
    junk_pos = np.flatnonzero(np.isin(column, np.asarray(junk, dtype=np.int64)))
    # each positive moves up by the number of junk images ranked strictly before it
    return pos - np.searchsorted(junk_pos, pos, side="left")


def _precision_at(pos_1based: np.ndarray, k: int) -> float:
    """revisitop's precision@k: ``kq = min(max(pos), k)``, then ``#(pos <= kq) / kq``."""
    if pos_1based.size == 0:
        return 0.0
    kq = min(int(pos_1based.max()), k)
    return float(np.count_nonzero(pos_1based <= kq) / kq)


def compute_map(
    ranks: np.ndarray, gnd: Sequence[dict], kappas: Sequence[int] = (1, 5, 10)
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """revisitop ``compute_map``: returns (map, aps, mpr, prs) as fractions in [0, 1].

    ``gnd`` entries use ``ok`` (positives) and optionally ``junk``. ``aps`` (n_q,) and ``prs``
    (n_q, len(kappas)) are ``nan`` for queries without positives, which the means leave out.
    A query whose positives are all missing from a truncated ranking scores 0 (revisitop fails).
    """
    ranks = _check_ranks(ranks, gnd)
    if any("ok" not in entry for entry in gnd):
        raise DeepretError(
            "ground truth entries need an 'ok' list of positives: "
            "convert revisited ground truth with protocol_gnd(gnd, 'easy'|'medium'|'hard')"
        )
    n_q = len(gnd)
    aps = np.full(n_q, np.nan)
    prs = np.full((n_q, len(kappas)), np.nan)
    for q, entry in enumerate(gnd):
        n_pos = len(entry["ok"])
        if n_pos == 0:
            continue
        pos = _positive_positions(ranks[:, q], entry["ok"], entry.get("junk", ()))
        aps[q] = average_precision(pos, n_pos)
        prs[q] = [_precision_at(pos + 1, k) for k in kappas]
    valid = ~np.isnan(aps)
    if not valid.any():
        return math.nan, aps, np.full(len(kappas), np.nan), prs
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def label_results(
    ranked_db_indices: Sequence[int], gnd_entry: dict, protocol: str | None = None
) -> list[str]:
    """Label each ranked database index "positive", "junk" or "negative" for one query.

    Default protocol: "old" for ok/junk ground truth, "medium" (easy+hard positive) for revisited.
    """
    entry = protocol_gnd([gnd_entry], protocol or default_protocol(gnd_entry))[0]
    positives, junk = set(entry["ok"].tolist()), set(entry["junk"].tolist())
    return [
        "positive" if i in positives else "junk" if i in junk else "negative"
        for i in (int(i) for i in ranked_db_indices)
    ]


def _check_ranks(ranks: np.ndarray, gnd: Sequence[dict]) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        hint = " (transposed? expected (n_db, n_queries))" if ranks.shape[:1] == (len(gnd),) else ""
        raise DeepretError(
            f"ranks have shape {ranks.shape} but the ground truth has {len(gnd)} queries: "
            f"expected (n_db, {len(gnd)}){hint}"
        )
    if not np.issubdtype(ranks.dtype, np.integer):
        raise DeepretError(f"ranks have dtype {ranks.dtype}: expected integer database indices")
    return ranks


@dataclass
class EvalResult:
    """Results of one protocol, in percent."""

    protocol: str
    map: float
    aps: np.ndarray  # per query, nan where the query has no positives
    mp_at_k: dict[int, float]


def evaluate(
    ranks_or_scores: np.ndarray,
    gnd: Sequence[dict],
    protocols: Sequence[str] | None = None,
    kappas: Sequence[int] = (1, 5, 10),
) -> dict[str, EvalResult]:
    """Evaluate integer ranks or float similarities (both (n_db, n_q)) under each protocol.

    ``protocols`` defaults to all protocols of the ground truth (see :func:`protocols_of`).
    """
    arr = np.asarray(ranks_or_scores)
    if np.issubdtype(arr.dtype, np.floating):
        arr = rank(arr)
    ranks = _check_ranks(arr, gnd)
    results = {}
    for protocol in protocols or protocols_of(gnd):
        m, aps, mpr, _ = compute_map(ranks, protocol_gnd(gnd, protocol), kappas)
        results[protocol] = EvalResult(
            protocol=protocol,
            map=100.0 * m,
            aps=100.0 * aps,
            mp_at_k={int(k): 100.0 * float(p) for k, p in zip(kappas, mpr)},
        )
    return results


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def results_to_json(
    results: dict[str, EvalResult], qimlist: Sequence[str] | None = None
) -> dict:
    """JSON-ready dict: per protocol mAP, mP@k and per-query AP (percent; nan -> null)."""
    out: dict = {}
    if qimlist is not None:
        out["queries"] = list(qimlist)
    out["protocols"] = {
        name: {
            "mAP": _json_float(r.map),
            "mP@k": {str(k): _json_float(v) for k, v in r.mp_at_k.items()},
            "AP": [_json_float(a) for a in r.aps],
        }
        for name, r in results.items()
    }
    return out


def format_table(results: dict[str, EvalResult]) -> str:
    """Plain text table: protocol | mAP | mP@k for each k."""
    kappas = sorted({k for r in results.values() for k in r.mp_at_k})
    header = ["protocol", "mAP"] + [f"mP@{k}" for k in kappas]
    rows = [
        [name, f"{r.map:.2f}"] + [f"{r.mp_at_k.get(k, math.nan):.2f}" for k in kappas]
        for name, r in results.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]
    return "\n".join(lines)
