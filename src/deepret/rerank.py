"""Re-ranking after the first search: query expansion, database-side augmentation and diffusion.

A spec names methods joined by '+', each ``name`` or ``name:key=value,key=value``, applied in
order: database-side augmentation first (``dba``, ``alpha-dba``: the stored vectors are replaced
once, in `fit`), then query expansion (``qe``, ``alpha-qe``), then at most one ``diffusion``, last.

- ``qe`` (average query expansion, Chum et al. 2007): q' = normalise(q + d_1 + ... + d_n), the d_i
  the n nearest database vectors of q.
- ``alpha-qe`` (Radenovic et al. 2018): q' = normalise(q + sum_i max(q.d_i, 0)^alpha d_i).
- ``dba`` / ``alpha-dba``: the same averages applied to every database vector x with its n nearest
  *other* database vectors (x itself weighs 1).
- ``diffusion`` (Iscen et al. CVPR 2017): a sparse mutual k-NN graph of the database, affinities
  max(sim, 0)^gamma, symmetrically normalised S = D^-1/2 W D^-1/2; a query starts at its
  `truncate` nearest database vectors, y_i = max(q.x_i, 0)^gamma; ranking by f solving
  (I - alpha S) f = y with conjugate gradient (`iterations` steps at most). Vectors that the
  diffusion does not reach (f = 0) follow in the order of plain similarity. No N x N matrix is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

from deepret.errors import DeepretError
from deepret.vectors import EXACT, VectorIndex

# name -> default parameters (the papers' settings)
DEFAULTS: dict[str, dict[str, float]] = {
    "qe": {"n": 10},
    "alpha-qe": {"n": 10, "alpha": 3.0},
    "dba": {"n": 10},
    "alpha-dba": {"n": 10, "alpha": 3.0},
    "diffusion": {"k": 50, "truncate": 10, "gamma": 3.0, "alpha": 0.99, "iterations": 20},
}
INTEGER_KEYS = {"n", "k", "truncate", "iterations"}
# the order methods must come in: database side, then query side, then the ranking
STAGE_ORDER = {"dba": 0, "alpha-dba": 0, "qe": 1, "alpha-qe": 1, "diffusion": 2}


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
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def parse_rerank(spec: str) -> "Reranker":
    """A Reranker from a spec such as 'dba:n=3+alpha-qe:n=10,alpha=3' (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DeepretError(f"empty re-ranking spec {spec!r}: give methods joined by '+', from {', '.join(DEFAULTS)}")
    methods = [parse_method(part) for part in spec.split("+")]
    stages = [STAGE_ORDER[m.name] for m in methods]
    if stages != sorted(stages) or stages.count(2) > 1:
        raise DeepretError(f"re-ranking spec {spec!r} is out of order: database-side methods (dba, alpha-dba) "
                           "come first, then query expansion (qe, alpha-qe), then at most one diffusion, last")
    return Reranker(methods)


def knn(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k nearest database rows of each query: (scores, indices), each (Q, k)."""
    index = VectorIndex(EXACT, db.shape[1])
    index.add(db, np.arange(len(db)))
    return index.search(queries, min(k, len(db)))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def weighted_expansion(x: np.ndarray, db: np.ndarray, sims: np.ndarray, ids: np.ndarray,
                       alpha: float) -> np.ndarray:
    """normalise(x + sum_i max(sim_i, 0)^alpha db[ids_i]) for each row of x (alpha 0: plain average)."""
    weights = np.maximum(sims, 0.0) ** alpha if alpha else np.ones_like(sims)
    return _l2n(x + np.einsum("qn,qnd->qd", weights, db[ids])).astype(np.float32)


def augment_database(db: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """DBA: every row averaged with its n nearest other rows (weights max(sim, 0)^alpha, itself 1)."""
    n = min(n, len(db) - 1)
    if n < 1:
        return db.astype(np.float32)
    sims, ids = knn(db, db, n + 1)
    own = ids == np.arange(len(db))[:, None]
    keep = ~own
    keep[~own.any(axis=1), -1] = False  # itself not among the n+1 (ties): drop the farthest instead
    sims = sims[keep].reshape(len(db), n)
    ids = ids[keep].reshape(len(db), n)
    return weighted_expansion(db, db, sims, ids, alpha)


def expand_queries(db: np.ndarray, queries: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """QE: every query averaged with its n nearest database rows (weights max(sim, 0)^alpha, itself 1)."""
    sims, ids = knn(db, queries, n)
    return weighted_expansion(queries, db, sims, ids, alpha)


def affinity_graph(db: np.ndarray, k: int, gamma: float) -> sparse.csr_matrix:
    """Iscen et al.'s normalised affinity S = D^-1/2 W D^-1/2 of the mutual k-NN graph, sparse."""
    n = len(db)
    sims, ids = knn(db, db, min(k, n - 1) + 1)
    rows = np.repeat(np.arange(n), ids.shape[1])
    others = ids.ravel() != rows
    values = np.maximum(sims.ravel()[others], 0.0) ** gamma
    a = sparse.csr_matrix((values, (rows[others], ids.ravel()[others])), shape=(n, n))
    w = a.minimum(a.T).tocsr()  # mutual neighbours only; the similarity is symmetric
    w.eliminate_zeros()
    degrees = np.asarray(w.sum(axis=1)).ravel() + 1e-12
    d = sparse.diags(1.0 / np.sqrt(degrees))
    return (d @ w @ d).tocsr().astype(np.float64)


def diffuse(graph: sparse.csr_matrix, db: np.ndarray, queries: np.ndarray, truncate: int, gamma: float,
            alpha: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(f, plain similarity), each (Q, N): f solves (I - alpha S) f = y by conjugate gradient, y the
    query's `truncate` nearest database rows with weights max(sim, 0)^gamma."""
    n = len(db)
    system = (sparse.identity(n, format="csr") - alpha * graph).tocsr()
    sims, ids = knn(db, queries, truncate)
    plain = queries @ db.T
    f = np.zeros((len(queries), n))
    for q in range(len(queries)):
        y = np.zeros(n)
        y[ids[q]] = np.maximum(sims[q], 0.0) ** gamma
        f[q], _ = cg(system, y, rtol=1e-6, maxiter=iterations)
    return f, plain


class Reranker:
    """The methods of a spec, applied in order; `fit` computes the database side once."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self.spec = "+".join(str(m) for m in methods)
        self._db: np.ndarray | None = None            # the database after DBA (None: not fitted)
        self._graph: sparse.csr_matrix | None = None   # diffusion's S

    def __repr__(self) -> str:
        return f"Reranker({self.spec!r})"

    @property
    def fitted(self) -> bool:
        return self._db is not None

    def fit(self, db: np.ndarray) -> "Reranker":
        """Offline part: the augmented database vectors (DBA) and the diffusion graph."""
        x = np.ascontiguousarray(db, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise DeepretError(f"re-ranking needs a non-empty (N, D) database, got shape {x.shape}")
        self._graph = None
        for m in self.methods:
            if m.name in ("dba", "alpha-dba"):
                x = augment_database(x, int(m.params["n"]), m.params.get("alpha", 0.0))
            elif m.name == "diffusion":
                self._graph = affinity_graph(x, int(m.params["k"]), m.params["gamma"])
        self._db = x
        return self

    def rerank(self, db: np.ndarray | None, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), indices (Q, k)) into `db`'s rows, best first; k=None: all of db.
        Fits on `db` first unless already fitted on a database of the same shape; db None: the
        database it was fitted on (or whose state it loaded)."""
        if db is None and not self.fitted:
            raise DeepretError(f"re-ranker {self.spec!r} has no database: call fit(db) first")
        if db is not None and (not self.fitted or self._db.shape != np.shape(db)):
            self.fit(db)
        x = self._db
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != x.shape[1]:
            raise DeepretError(f"queries of dimension {q.shape[1]} for a database of dimension {x.shape[1]}: "
                               "describe queries with the database's model")
        k = len(x) if k is None else max(1, min(int(k), len(x)))
        diffusion = None
        for m in self.methods:
            if m.name in ("qe", "alpha-qe"):
                q = expand_queries(x, q, int(m.params["n"]), m.params.get("alpha", 0.0))
            elif m.name == "diffusion":
                diffusion = m.params
        if diffusion is None:
            scores, ids = knn(x, q, k)
            return scores, ids.astype(np.int64)
        f, plain = diffuse(self._graph, x, q, int(diffusion["truncate"]), diffusion["gamma"],
                           diffusion["alpha"], int(diffusion["iterations"]))
        order = np.stack([np.lexsort((-plain[i], -f[i]))[:k] for i in range(len(q))])
        return np.take_along_axis(f, order, axis=1).astype(np.float32), order.astype(np.int64)

    def ranks(self, db: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(n_db, n_q) database indices per query, best first (revisitop's `ranks` layout)."""
        return self.rerank(db, queries)[1].T

    def state(self) -> dict[str, np.ndarray]:
        """What `fit` computed, as arrays: 'spec', 'db' and the diffusion graph's CSR arrays."""
        if not self.fitted:
            raise DeepretError(f"re-ranker {self.spec!r} has no state yet: call fit(db) first")
        out = {"spec": np.array(self.spec), "db": self._db}
        if self._graph is not None:
            out |= {"graph_data": self._graph.data, "graph_indices": self._graph.indices,
                    "graph_indptr": self._graph.indptr}
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> "Reranker":
        """Restore what `fit` computed (from `state()`); DeepretError if it is another spec's."""
        spec = str(np.asarray(state.get("spec", "")))
        if spec != self.spec:
            raise DeepretError(f"stored re-ranking state is for {spec!r}, not {self.spec!r}: fit again")
        db = np.ascontiguousarray(state["db"], dtype=np.float32)
        needs_graph = any(m.name == "diffusion" for m in self.methods)
        if needs_graph and "graph_indptr" not in state:
            raise DeepretError(f"stored re-ranking state for {self.spec!r} lacks the diffusion graph: fit again")
        self._db = db
        self._graph = sparse.csr_matrix((state["graph_data"], state["graph_indices"], state["graph_indptr"]),
                                        shape=(len(db), len(db))) if needs_graph else None
        return self
