"""Re-ranking after the first search: query expansion, database-side augmentation and diffusion.

A spec names methods joined by '+', each ``name`` or ``name:key=value,key=value``, applied in
order: database-side augmentation first (``dba``, ``alpha-dba``: the stored vectors are replaced
once, in `fit`), then query expansion (``qe``, ``alpha-qe``), then at most one ``diffusion``, last.

- ``qe`` (average query expansion, Chum et al. 2007): q' = normalise(q + d_1 + ... + d_n), the d_i
  the n nearest database vectors of q.
- ``alpha-qe`` (Radenovic et al. 2018): q' = normalise(q + sum_i max(q.d_i, 0)^alpha d_i).
- ``dba`` / ``alpha-dba``: the same averages applied to every database vector x with its n nearest
  *other* database vectors (x itself weighs 1).
- ``diffusion`` (Iscen et al. CVPR 2017): a sparse mutual k-NN graph W of the database, affinities
  max(sim, 0)^gamma. A query starts at its `kq` nearest database vectors, y_i = max(q.x_i, 0)^gamma,
  and is ranked by f solving (I - alpha S) f = y with conjugate gradient (`iterations` steps at
  most, relative tolerance 1e-6), S = D^-1/2 W D^-1/2. Truncation (the paper's large-scale
  variant): only the subgraph of the query's `truncate` nearest database vectors is solved, W
  restricted to them and normalised there; the rest follows in plain-similarity order, as do
  vectors the diffusion does not reach (f = 0). When `truncate` >= N the subgraph is the whole
  graph and the system I - alpha S is computed once in `fit`. No N x N matrix is ever built.

Costs: `fit` does the offline part once (a FAISS Flat index of the final database vectors, the
DBA self-search, the k-NN graph); per query, QE costs one extra exact search, diffusion one exact
search for the top `truncate` plus a CG solve on a truncate x truncate sparse system (about k
non-zeros a row). `rerank(db, ...)` refits only when `db`'s content differs from what it was
fitted on (a CRC-32 fingerprint of its float32 bytes: one pass over db, about the cost of one exact
search); `rerank(None, ...)` after `fit` skips that check.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import faiss
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

from deepret.errors import DeepretError

# name -> default parameters (the papers' settings; diffusion's those of Iscen et al.'s code for global
# descriptors: k=50, kq=10, gamma=3, alpha=0.99, 20 CG iterations; truncate 1000, as in the truncated
# large-scale variant of the paper's follow-up code)
DEFAULTS: dict[str, dict[str, float]] = {
    "qe": {"n": 10},
    "alpha-qe": {"n": 10, "alpha": 3.0},
    "dba": {"n": 10},
    "alpha-dba": {"n": 10, "alpha": 3.0},
    "diffusion": {"k": 50, "kq": 10, "truncate": 1000, "gamma": 3.0, "alpha": 0.99, "iterations": 20},
}
INTEGER_KEYS = {"n", "k", "kq", "truncate", "iterations"}
# the order methods must come in: database side, then query side, then the ranking
STAGE_ORDER = {"dba": 0, "alpha-dba": 0, "qe": 1, "alpha-qe": 1, "diffusion": 2}
STATE_FORMAT = 2  # state(): 2 = the database vectors, the affinity W (graph_*) and the fitted-on fingerprint
CG_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Method:
    """One step of a re-ranking spec: its name and its parameters (defaults filled in)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        given = ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}:{given}" if given else self.name


def parse_method(text: str) -> Method:
    """'alpha-qe:n=5,alpha=3' -> Method('alpha-qe', {'n': 5, 'alpha': 3.0})."""
    name, _, args = text.strip().partition(":")
    name = name.strip()
    if name not in DEFAULTS:
        raise DeepretError(f"unknown re-ranking method {name!r} in {text!r}: choose from {', '.join(DEFAULTS)}")
    params = dict(DEFAULTS[name])
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in params:
            raise DeepretError(f"unknown parameter {key!r} of re-ranking method {name!r}: "
                               f"valid keys are {', '.join(DEFAULTS[name])}")
        if not eq:
            raise DeepretError(f"parameter {item!r} of {name!r} has no value: write {key}=VALUE")
        params[key] = _number(name, key, value.strip())
    return Method(name, params)


def _number(name: str, key: str, value: str) -> float:
    try:
        x = int(value) if key in INTEGER_KEYS else float(value)
    except ValueError:
        kind = "a whole number" if key in INTEGER_KEYS else "a number"
        raise DeepretError(f"parameter {key}={value!r} of {name!r} must be {kind}") from None
    bad = (x < 1) if key in INTEGER_KEYS else (x < 0 or (key == "alpha" and name == "diffusion" and x >= 1))
    if bad or not np.isfinite(x):
        limit = ">= 1" if key in INTEGER_KEYS else "in [0, 1)" if name == "diffusion" else ">= 0"
        raise DeepretError(f"parameter {key}={value} of {name!r} must be {limit}")
    return x


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))  # exact: parsing it gives v back


def parse_rerank(spec: str) -> Reranker:
    """A Reranker from a spec such as 'dba:n=3+alpha-qe:n=10,alpha=3' (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DeepretError(f"empty re-ranking spec {spec!r}: give methods joined by '+', from {', '.join(DEFAULTS)}")
    methods = [parse_method(part) for part in spec.split("+")]
    stages = [STAGE_ORDER[m.name] for m in methods]
    if stages != sorted(stages) or stages.count(2) > 1:
        raise DeepretError(f"re-ranking spec {spec!r} is out of order: database-side methods (dba, alpha-dba) "
                           "come first, then query expansion (qe, alpha-qe), then at most one diffusion, last")
    return Reranker(methods)


def fingerprint(db: np.ndarray) -> str:
    """'N x D:crc32' of the float32 C-order bytes of `db`: what a fit is keyed by (one pass over db)."""
    x = np.ascontiguousarray(db, dtype=np.float32)
    return f"{'x'.join(map(str, x.shape))}:{zlib.crc32(memoryview(x).cast('B')):08x}"


def flat_index(x: np.ndarray) -> faiss.IndexFlatIP:
    """An exact inner-product FAISS index holding (a copy of) the rows of x."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def knn(db: np.ndarray | faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k nearest database rows of each query: (scores, indices), each (Q, k).
    `db`: the (N, D) rows, or a FAISS index over them (kept: no copy of the database per call)."""
    index = db if isinstance(db, faiss.Index) else flat_index(db)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(int(k), index.ntotal))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def weighted_expansion(x: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """normalise(x + sum_i max(sim_i, 0)^alpha neighbours_i) for each row of x; neighbours (Q, n, D)
    (alpha 0: plain average)."""
    weights = np.maximum(sims, 0.0) ** alpha if alpha else np.ones_like(sims)
    return _l2n(x + np.einsum("qn,qnd->qd", weights, neighbours)).astype(np.float32)


def augment_database(db: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """DBA: every row averaged with its n nearest other rows (weights max(sim, 0)^alpha, itself 1);
    the weighted sums as one sparse (N, N) x (N, D) product, never an (N, n, D) array."""
    db = np.ascontiguousarray(db, dtype=np.float32)
    n = min(n, len(db) - 1)
    if n < 1:
        return db.copy()
    sims, ids = knn(db, db, n + 1)
    own = ids == np.arange(len(db))[:, None]
    keep = ~own
    keep[~own.any(axis=1), -1] = False  # itself not among the n+1 (ties): drop the farthest instead
    sims = sims[keep].reshape(len(db), n)
    ids = ids[keep].reshape(len(db), n)
    weights = np.maximum(sims, 0.0) ** alpha if alpha else np.ones_like(sims)
    m = sparse.csr_matrix((weights.ravel(), ids.ravel(), np.arange(0, len(db) * n + 1, n)), shape=(len(db), len(db)))
    return _l2n(db + m @ db).astype(np.float32)


def expand_queries(index: faiss.Index, queries: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """QE: every query averaged with its n nearest database rows (weights max(sim, 0)^alpha, itself 1)."""
    sims, ids = knn(index, queries, n)
    neighbours = index.reconstruct_batch(ids.ravel()).reshape(*ids.shape, index.d)
    return weighted_expansion(queries, neighbours, sims, alpha)


def affinity_graph(db: np.ndarray, k: int, gamma: float, index: faiss.Index | None = None) -> sparse.csr_matrix:
    """Iscen et al.'s affinity W of the mutual k-NN graph (each row's k nearest other rows; an edge
    where both ends are among each other's), weights max(sim, 0)^gamma, zero diagonal; sparse (N, N).
    `index`: an exact index over `db` already built."""
    n = len(db)
    sims, ids = knn(index if index is not None else db, db, min(k, n - 1) + 1)
    rows = np.repeat(np.arange(n), ids.shape[1])
    others = (ids.ravel() != rows) & (ids.ravel() >= 0)
    values = np.maximum(sims.ravel()[others].astype(np.float64), 0.0) ** gamma
    a = sparse.csr_matrix((values, (rows[others], ids.ravel()[others])), shape=(n, n))
    w = a.minimum(a.T).tocsr()  # mutual neighbours only; the similarity is symmetric
    w.eliminate_zeros()
    return w


def diffusion_system(w: sparse.csr_matrix, alpha: float) -> sparse.csr_matrix:
    """I - alpha S, S = D^-1/2 W D^-1/2 the normalised affinity (isolated vertices: rows of S zero)."""
    degrees = np.asarray(w.sum(axis=1)).ravel()
    inv = np.zeros_like(degrees)
    inv[degrees > 0] = 1.0 / np.sqrt(degrees[degrees > 0])
    d = sparse.diags(inv)
    return (sparse.identity(w.shape[0], format="csr") - alpha * (d @ w @ d)).tocsr()


def solve(system: sparse.csr_matrix, y: np.ndarray, iterations: int) -> np.ndarray:
    """f with system f = y by at most `iterations` conjugate-gradient steps (zero where y reaches nothing)."""
    if not y.any():
        return np.zeros_like(y)
    f, _ = cg(system, y, rtol=CG_TOLERANCE, maxiter=iterations)
    return f


class Reranker:
    """The methods of a spec, applied in order; `fit` computes the database side once and keeps it."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self.spec = "+".join(str(m) for m in methods)
        self.diffusion = next((m.params for m in methods if m.name == "diffusion"), None)
        self._index: faiss.IndexFlatIP | None = None   # the database after DBA (None: not fitted)
        self._fingerprint: str | None = None           # of the database it was fitted on (before DBA)
        self._affinity: sparse.csr_matrix | None = None  # diffusion's W
        self._system: sparse.csr_matrix | None = None    # I - alpha S of the whole graph (truncate >= N)

    def __repr__(self) -> str:
        return f"Reranker({self.spec!r})"

    @property
    def fitted(self) -> bool:
        return self._index is not None

    @property
    def graph(self) -> sparse.csr_matrix | None:
        """Diffusion's sparse affinity W, as fitted (None: no diffusion, or not fitted)."""
        return self._affinity

    @property
    def system(self) -> sparse.csr_matrix | None:
        """The sparse I - alpha S of the whole graph, kept when truncate >= N (else built per query)."""
        return self._system

    def fitted_on(self, db: np.ndarray) -> bool:
        """Whether the fit is of exactly this database (same shape and content)."""
        return self.fitted and fingerprint(db) == self._fingerprint

    def fit(self, db: np.ndarray) -> Reranker:
        """Offline part: the augmented database vectors (DBA), their exact index and the diffusion graph."""
        x = np.array(db, dtype=np.float32, order="C", copy=True)  # owned: later edits of `db` do not leak in
        if x.ndim != 2 or len(x) == 0:
            raise DeepretError(f"re-ranking needs a non-empty (N, D) database, got shape {x.shape}")
        source = fingerprint(x)
        for m in self.methods:
            if m.name in ("dba", "alpha-dba"):
                x = augment_database(x, int(m.params["n"]), m.params.get("alpha", 0.0))
        index = flat_index(x)
        affinity = None
        if self.diffusion is not None:
            affinity = affinity_graph(x, int(self.diffusion["k"]), self.diffusion["gamma"], index)
        self._set(index, source, affinity)  # the index holds the vectors: x is not kept
        return self

    def _set(self, index: faiss.IndexFlatIP, source: str, affinity: sparse.csr_matrix | None) -> None:
        system = None
        if affinity is not None and int(self.diffusion["truncate"]) >= index.ntotal:
            system = diffusion_system(affinity, self.diffusion["alpha"])
        self._index, self._fingerprint, self._affinity, self._system = index, source, affinity, system

    def rerank(self, db: np.ndarray | None, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), indices (Q, k)) into the database's rows, best first; k=None: all of them.
        `db`: fits on it first unless already fitted on this very content (see `fitted_on`); None:
        the database it was fitted on (or whose state it loaded), without that check."""
        if db is None and not self.fitted:
            raise DeepretError(f"re-ranker {self.spec!r} has no database: call fit(db) first")
        if db is not None and not self.fitted_on(db):
            self.fit(db)
        index = self._index
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != index.d:
            raise DeepretError(f"queries of dimension {q.shape[-1]} for a database of dimension {index.d}: "
                               "describe queries with the database's model")
        n = index.ntotal
        k = n if k is None else max(1, min(int(k), n))
        for m in self.methods:
            if m.name in ("qe", "alpha-qe"):
                q = expand_queries(index, q, int(m.params["n"]), m.params.get("alpha", 0.0))
        if self.diffusion is None:
            scores, ids = knn(index, q, k)
            return scores, ids.astype(np.int64)
        return self._diffuse(q, k)

    def _diffuse(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.diffusion
        n = self._index.ntotal
        top = min(int(p["truncate"]), n)
        kq, gamma, alpha, iterations = min(int(p["kq"]), top), p["gamma"], p["alpha"], int(p["iterations"])
        sims, ids = knn(self._index, q, max(top, k))  # the plain ranking, best first
        scores = np.zeros((len(q), k), dtype=np.float32)
        out = np.empty((len(q), k), dtype=np.int64)
        for i in range(len(q)):
            sub = ids[i, :top]
            y = np.zeros(top)
            y[:kq] = np.maximum(sims[i, :kq], 0.0) ** gamma
            if self._system is not None:  # the whole graph: the system computed in fit, in row order
                full = np.zeros(n)
                full[sub] = y
                f = solve(self._system, full, iterations)[sub]
            else:  # truncated: the subgraph of the query's top `truncate`, normalised within it
                f = solve(diffusion_system(self._affinity[sub][:, sub], alpha), y, iterations)
            order = np.argsort(-f, kind="stable")  # sub is in plain order: ties (f = 0) keep it
            out[i] = np.concatenate([sub[order], ids[i, top:]])[:k]
            scores[i, :min(k, top)] = f[order][:k]
        return scores, out

    def ranks(self, db: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(n_db, n_q) database indices per query, best first (revisitop's `ranks` layout)."""
        return self.rerank(db, queries)[1].T

    def state(self) -> dict[str, np.ndarray]:
        """What `fit` computed, as arrays: 'spec', 'format', 'fingerprint', 'db' (after DBA) and the
        diffusion affinity's CSR arrays."""
        if not self.fitted:
            raise DeepretError(f"re-ranker {self.spec!r} has no state yet: call fit(db) first")
        out = {"spec": np.array(self.spec), "format": np.array(STATE_FORMAT),
               "fingerprint": np.array(self._fingerprint), "db": self._index.reconstruct_n(0, self._index.ntotal)}
        if self._affinity is not None:
            out |= {"graph_data": self._affinity.data, "graph_indices": self._affinity.indices,
                    "graph_indptr": self._affinity.indptr}
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> Reranker:
        """Restore what `fit` computed (from `state()`); DeepretError if it is another spec's or format's."""
        spec = str(np.asarray(state.get("spec", "")))
        if spec != self.spec:
            raise DeepretError(f"stored re-ranking state is for {spec!r}, not {self.spec!r}: fit again")
        if int(np.asarray(state.get("format", 0))) != STATE_FORMAT or "fingerprint" not in state:
            raise DeepretError(f"stored re-ranking state for {self.spec!r} is of an older format: fit again")
        if self.diffusion is not None and "graph_indptr" not in state:
            raise DeepretError(f"stored re-ranking state for {self.spec!r} lacks the diffusion graph: fit again")
        index = flat_index(state["db"])
        affinity = None
        if self.diffusion is not None:
            n = index.ntotal
            affinity = sparse.csr_matrix((state["graph_data"], state["graph_indices"], state["graph_indptr"]),
                                         shape=(n, n))
        self._set(index, str(np.asarray(state["fingerprint"])), affinity)
        return self
