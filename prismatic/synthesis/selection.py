"""Prismatic Synthesis selection rules: which candidates of a round join the pool.

The pool is clustered (`prismatic.synthesis.kmeans.spherical_kmeans`) into k clusters of sizes s_0 … s_{k−1}
(pool members only). Each candidate i goes to its nearest pool centroid by cosine,

    c(i) = argmax_j cos(x_i, centroid_j)        (ties: lowest j),

and the sparsity threshold is the median pool cluster size

    m = median(s_0, …, s_{k−1})                 (numpy: mean of the two middle values when k is even).

Rules (Jung et al., 2025; docs/formulas.md#selection-rules):
  paper     kept(i) ⇔ s_{c(i)} < m (strict). Every candidate is judged against the pool alone, so any
            number of candidates may pile into one sparse cluster. With k = 1, or all sizes equal,
            nothing is kept. The number it keeps, K_paper, is the default budget of the other rules.
  balanced  kept(i) ⇔ n_{c(i)} < m (strict), where n_j = s_j + (candidates of this round already kept
            in j) at the moment i is decided; m stays the median of the original pool sizes. A sparse
            cluster therefore accepts at most ⌈m⌉ − s_j candidates, and a cluster with s_j ≥ m none,
            so candidates do not pile into one sparse cluster. Within a cluster the best-fitting
            candidates (cosine descending, then id) are decided first, so they are the ones kept.
            Across clusters, candidates are decided in order of (n_{c(i)} now, cosine descending, id):
            the cluster with the smallest current count takes its best remaining candidate next, so
            the smallest clusters fill first. With the per-cluster threshold alone this interleaving
            does not change any outcome; it decides who is kept when `max_kept` caps the number of
            candidates kept this round (once reached, every later candidate is rejected).
            With a budget `count` B the threshold is dropped and the same order is followed until
            min(B, #candidates) are kept ("water-filling"): every cluster below m is filled before any
            cluster at or above m takes a candidate, so for B ≤ (what the threshold rule keeps) the
            result equals `max_kept=B`, and a larger B continues into the smallest remaining clusters.
  logdet    greedy maximum-volume selection in feature space, with budget B. With unit rows,
            pool rows p_1 … p_n and the candidates kept so far, let

                A = ε I + Σ_pool p pᵀ + Σ_kept x xᵀ            (d × d, symmetric positive definite).

            Each step keeps the remaining candidate with the largest leverage  ℓ(x) = xᵀ A⁻¹ x,
            which is the one that raises log det A the most, since
            log det(A + x xᵀ) = log det A + log(1 + ℓ(x)) (matrix determinant lemma). Then, with
            u = A⁻¹ x* (Sherman–Morrison),

                A⁻¹ ← A⁻¹ − u uᵀ / (1 + ℓ(x*)),      ℓ(x_i) ← ℓ(x_i) − (x_iᵀ u)² / (1 + ℓ(x*)),

            never an eigendecomposition. A⁻¹ is held in one of two forms (`GreedyLogDet`), chosen like
            G-Vendi's (`prismatic.metrics.vendi.gram_form`) by the rows r = n + (kept so far) against d:

              Gram form (r < d), Woodbury with M = εI_n + P Pᵀ (n × n, P the unit pool rows):
                A⁻¹ = (I_d − Pᵀ M⁻¹ P)/ε − Σ_kept u uᵀ/(1 + ℓ(x*)), never formed; start
                O(n²d + n³ + #candidates · n d), a step O((n + kept) d + n² + #candidates · d);
              moment form (r ≥ d): A⁻¹ as a dense d × d matrix; start O(n d² + d³ + #candidates · d²),
                a step O(d² + #candidates · d).

            The Gram form turns into the moment form once r reaches d (A⁻¹ formed once, O(r d²)).
            Both hold the same A⁻¹ (and by Sylvester log det A = (d − n) log ε + log det M), so they
            keep the same candidates with the same gains. Maximizing log det(XᵀX + εI) spreads the spectrum
            of XᵀX, the matrix whose normalized eigenvalues G-Vendi takes the entropy of. ε (> 0,
            in units of one unit-norm row's contribution) is the prior weight of every direction:
            a direction that pool and kept rows cover with eigenvalue λ counts as new in proportion to
            1/(λ + ε). A candidate identical to a pool row p has ℓ(p) ≤ 1/(1 + ε) (since A ⪰ εI + p pᵀ),
            below the 1/ε of a direction that no pool or kept row touches, so copies of pool rows
            come after every such candidate. Ties (leverages within a
            relative 1e-9 of the best) go to the lowest id, so the outcome does not depend on input
            order. Arithmetic is float64.

  novelty   greedy log-det as above, but with a threshold instead of a count: keep the candidate of
            largest gain g(x) = log(1 + ℓ(x)) while g(x) ≥ τ, where

                τ = median over pool rows p of  log(1 + pᵀ A₋ₚ⁻¹ p) = −log(1 − h_p),
                h_p = pᵀ A⁻¹ p  (A over the pool alone; A₋ₚ = A − p pᵀ, by Sherman–Morrison),

            the median leave-one-out gain of the pool's own rows: a candidate joins when it adds
            at least as much volume as a typical pool sample adds to the rest of the pool, i.e. it
            lands in a region of gradient space sparser than the typical pool sample's. The number
            kept follows from the candidates (none when nothing new arrives); `count`, if given, caps
            it. A candidate whose cosine to a pool row or a kept candidate is ≥ `COPY_COSINE` is never
            kept (a copy adds no new direction, though an isolated pool row's copy can pass τ).

Every function returns one row per candidate, in input order, with the `selection` table's columns:
id (str), cluster (int64, the nearest pool cluster), cluster_size_at_decision (int64: s_j for `paper`;
n_j just before the decision for `balanced` and, for `logdet` and `novelty`, n_j just before a kept
candidate was kept or, for a rejected one, after the last step), gain (float64: log(1 + ℓ(x)) in nats
when a kept candidate was kept or, for a rejected one, after the last step; null for `paper` and
`balanced`), kept (bool), rule (str). Ids must be unique; they are compared as strings.

The chance baseline every round records beside the selection, the pool G-Vendi after adding as many
candidates drawn at random, is `prismatic.synthesis.control.random_control`.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import polars as pl

from prismatic.metrics.vendi import gram_form
from prismatic.storage.schema import schema
from prismatic.synthesis.kmeans import Clustering, assign, unit_rows

RULES = ("paper", "balanced", "logdet", "novelty")
BUDGETED_RULES = ("balanced", "logdet", "novelty")
POOL_FEATURE_RULES = ("logdet", "novelty")
DEFAULT_EPSILON = 1.0
COPY_COSINE = 0.999
"""novelty: a candidate this close (cosine) to a pool row or a kept candidate is a copy, never kept."""
_TIE = 1e-9  # leverages within this relative distance of the best count as tied (lowest id wins)
_GRAM_ROWS = 8192  # pool rows per chunk when accumulating Σ p pᵀ


def sparse_threshold(sizes: np.ndarray) -> float:
    """m = numpy median of the pool cluster sizes; a cluster is sparse iff its size < m."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("cluster sizes must be a non-empty 1-D array")
    return float(np.median(sizes))


def select(rule: str, candidate_ids: Sequence, candidate_features: np.ndarray,
           clustering: Clustering, max_kept: int | None = None, *, count: int | None = None,
           pool_features: np.ndarray | None = None, epsilon: float = DEFAULT_EPSILON) -> pl.DataFrame:
    """Dispatch on `rule` ("paper", "balanced", "logdet" or "novelty"); see the module docstring.

    count: the budget of balanced and logdet (None: K_paper, what `paper` keeps of these
      candidates), or novelty's optional cap (None: no cap). `paper` takes no budget.
    max_kept: balanced only, instead of `count`: the threshold rule, capped at max_kept.
    pool_features: logdet and novelty only (required): the pool's feature rows (n × d).
    epsilon: logdet and novelty: the ridge ε of A = εI + XᵀX.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    if max_kept is not None and rule != "balanced":
        raise ValueError("max_kept applies to the balanced rule only")
    if count is not None and rule not in BUDGETED_RULES:
        raise ValueError(f"count applies to the budgeted rules ({', '.join(BUDGETED_RULES)}) only")
    if pool_features is not None and rule not in POOL_FEATURE_RULES:
        raise ValueError(f"pool_features apply to the {' and '.join(POOL_FEATURE_RULES)} rules only")
    if rule == "novelty":
        if pool_features is None:
            raise ValueError("the novelty rule needs the pool's features (pool_features)")
        return select_novelty(candidate_ids, candidate_features, pool_features, clustering=clustering,
                              epsilon=epsilon, count=count)
    if rule == "paper":
        return select_paper(candidate_ids, candidate_features, clustering)
    if rule == "balanced" and max_kept is not None:
        if count is not None:
            raise ValueError("give count or max_kept, not both")
        return select_balanced(candidate_ids, candidate_features, clustering, max_kept=max_kept)
    if count is None:
        count = paper_count(candidate_ids, candidate_features, clustering)
    if rule == "balanced":
        return select_balanced(candidate_ids, candidate_features, clustering, count=count)
    if pool_features is None:
        raise ValueError("the logdet rule needs the pool's features (pool_features)")
    return select_logdet(candidate_ids, candidate_features, pool_features, count, clustering=clustering,
                         epsilon=epsilon)


def paper_count(candidate_ids: Sequence, candidate_features: np.ndarray, clustering: Clustering) -> int:
    """K_paper: how many of these candidates the paper rule keeps (the default budget)."""
    return int(select_paper(candidate_ids, candidate_features, clustering)["kept"].sum())


def select_paper(candidate_ids: Sequence, candidate_features: np.ndarray,
                 clustering: Clustering) -> pl.DataFrame:
    """Paper rule: kept iff the pool size of the candidate's nearest cluster is < the median size."""
    ids, labels, _ = _prepare(candidate_ids, candidate_features, clustering)
    threshold = sparse_threshold(clustering.sizes)
    sizes = np.asarray(clustering.sizes, dtype=np.int64)[labels]
    return _frame(ids, labels, sizes, sizes < threshold, "paper")


def select_balanced(candidate_ids: Sequence, candidate_features: np.ndarray,
                    clustering: Clustering, *, max_kept: int | None = None,
                    count: int | None = None) -> pl.DataFrame:
    """Balanced rule: like `paper`, but each kept candidate counts toward its cluster's size.

    Decision order, counts and the threshold are as in the module docstring. A candidate's
    `cluster_size_at_decision` is its cluster's count (pool + kept so far) just before its decision.
    `max_kept` (optional) caps how many candidates are kept in total; the sparsest clusters get the
    budget first. `count` (optional, instead of max_kept) drops the threshold and keeps exactly
    min(count, #candidates), smallest current cluster first.
    """
    if max_kept is not None and count is not None:
        raise ValueError("give count or max_kept, not both")
    for name, value in (("max_kept", max_kept), ("count", count)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value}")
    ids, labels, cosine = _prepare(candidate_ids, candidate_features, clustering)
    n = len(ids)
    if count is not None:
        budget, threshold = count, float("inf")
    else:
        budget, threshold = (n if max_kept is None else max_kept), sparse_threshold(clustering.sizes)
    counts = np.asarray(clustering.sizes, dtype=np.int64).copy()
    size_at = np.zeros(n, dtype=np.int64)
    kept = np.zeros(n, dtype=bool)
    # Per cluster: its candidates, best fit first (cosine descending, then id, then input position).
    queues: dict[int, list[int]] = {}
    for i in sorted(range(n), key=lambda i: (-float(cosine[i]), ids[i], i), reverse=True):
        queues.setdefault(int(labels[i]), []).append(i)  # reversed, so .pop() yields the best
    heap = [(int(counts[j]), -float(cosine[q[-1]]), ids[q[-1]], q[-1], j) for j, q in queues.items()]
    heapq.heapify(heap)
    while heap:
        current, _, _, i, j = heapq.heappop(heap)
        queues[j].pop()
        size_at[i] = current
        if current < threshold and budget > 0:
            kept[i] = True
            budget -= 1
            counts[j] += 1
        if queues[j]:
            nxt = queues[j][-1]
            heapq.heappush(heap, (int(counts[j]), -float(cosine[nxt]), ids[nxt], nxt, j))
    return _frame(ids, labels, size_at, kept, "balanced")


class GreedyLogDet:
    """The state of greedy maximum-volume selection (module docstring, `logdet`).

    leverage: ℓ_i = x_iᵀ A⁻¹ x_i for every candidate (kept ones too), kept current by rank-1 updates.
    kept: candidate indices in the order they were kept.
    A⁻¹ (`inverse`) for A = εI + Σ_pool p pᵀ + Σ_kept x xᵀ over unit rows is held in the Gram form while
    n + kept < d (`form` "auto"; "gram" or "moment" force one form): the unit pool rows P (n × d), M⁻¹
    (n × n) and the rows w = u / √(1 + ℓ(x*)) of the kept steps, so A⁻¹ y = (y − Pᵀ M⁻¹ P y)/ε − Wᵀ W y;
    else as a dense d × d matrix. Memory: the candidates in float64 (#candidates × d × 8 bytes) plus
    (n + kept) × d + n × n (Gram form) or two d × d float64 matrices (moment form).
    """

    def __init__(self, pool_features: np.ndarray | None, candidate_features: np.ndarray, epsilon: float,
                 form: str = "auto"):
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.candidates = unit_rows(candidate_features, "candidate features", dtype=np.float64)
        d = self.candidates.shape[1]
        self.pool = None
        if pool_features is not None and len(pool_features):
            self.pool = np.asarray(pool_features)
            if self.pool.ndim != 2 or self.pool.shape[1] != d:
                raise ValueError(f"pool features must be an n × {d} matrix, got shape {self.pool.shape}")
        self.epsilon = float(epsilon)
        self.form = form
        self.kept: list[int] = []
        self._open = np.ones(self.candidates.shape[0], dtype=bool)
        self._pool_size = 0 if self.pool is None else len(self.pool)
        if gram_form(self._pool_size, d, form):
            self._dense = None
            self._rows = np.zeros((0, d)) if self.pool is None else unit_rows(self.pool, "pool features",
                                                                             dtype=np.float64)
            self._m_inverse = _spd_inverse(self.epsilon * np.eye(self._pool_size) + self._rows @ self._rows.T)
            self._steps = np.zeros((0, d))  # the rows w of the kept steps, [:len(kept)] in use
        else:
            gram = np.eye(d) * self.epsilon
            for block in self._pool_blocks():
                gram += block.T @ block
            self._dense = _spd_inverse(gram)
        self.leverage = np.concatenate([np.zeros(0)] + [
            self._leverages(self.candidates[start:start + _GRAM_ROWS])
            for start in range(0, len(self.candidates), _GRAM_ROWS)])

    @property
    def in_gram_form(self) -> bool:
        return self._dense is None

    @property
    def inverse(self) -> np.ndarray:
        """A⁻¹ as a d × d float64 matrix (formed here in the Gram form: O((n + kept) d²))."""
        if self._dense is not None:
            return self._dense
        steps = self._steps[:len(self.kept)]
        return ((np.eye(self._rows.shape[1]) - self._rows.T @ self._m_inverse @ self._rows) / self.epsilon
                - steps.T @ steps)

    def _leverages(self, rows: np.ndarray) -> np.ndarray:
        """xᵀ A⁻¹ x of each row, before any candidate is kept: Gram form (‖x‖² − qᵀ M⁻¹ q)/ε with q = P x."""
        if self._dense is not None:
            return np.einsum("ij,ij->i", rows @ self._dense, rows)
        q = rows @ self._rows.T
        return (np.einsum("ij,ij->i", rows, rows) - np.einsum("ij,ij->i", q @ self._m_inverse, q)) / self.epsilon

    def _solve(self, x: np.ndarray) -> np.ndarray:
        """A⁻¹ x (the forms as in the class docstring)."""
        if self._dense is not None:
            return self._dense @ x
        steps = self._steps[:len(self.kept)]
        return (x - self._rows.T @ (self._m_inverse @ (self._rows @ x))) / self.epsilon - steps.T @ (steps @ x)

    def best(self) -> int:
        """Index of the open candidate with the largest leverage (ties: lowest index); -1 if none."""
        if not self._open.any():
            return -1
        scores = np.where(self._open, self.leverage, -np.inf)
        top = scores.max()
        return int(np.flatnonzero(scores >= top - _TIE * abs(top))[0])

    def keep(self, index: int) -> None:
        """Add candidate `index` to A: Sherman–Morrison update of A⁻¹ and of every leverage."""
        if not self._open[index]:
            raise ValueError(f"candidate {index} is already kept")
        x = self.candidates[index]
        u = self._solve(x)
        denominator = 1.0 + float(x @ u)
        if self._dense is not None:
            self._dense -= np.outer(u, u) / denominator
        else:
            k = len(self.kept)
            if k == len(self._steps):  # capacity doubles: appending costs O(d) a step on average
                self._steps = np.concatenate([self._steps, np.zeros((max(k, 1), len(x)))])
            self._steps[k] = u / np.sqrt(denominator)
        self.leverage -= (self.candidates @ u) ** 2 / denominator
        self._open[index] = False
        self.kept.append(index)
        if self._dense is None and not gram_form(self._pool_size + len(self.kept), len(x), self.form):
            self._dense = self.inverse
            self._rows = self._m_inverse = self._steps = None

    def skip(self, index: int) -> None:
        """Decide candidate `index` without keeping it (A is unchanged)."""
        self._open[index] = False

    def pool_leverages(self) -> np.ndarray:
        """h_p = pᵀ A⁻¹ p of every pool row, against A before any candidate was kept (call first).
        Gram form: h = 1 − ε diag(M⁻¹), since P A⁻¹ Pᵀ = P Pᵀ M⁻¹ = I − ε M⁻¹."""
        if self.kept:
            raise ValueError("pool leverages are taken before any candidate is kept")
        if self.pool is None:
            return np.zeros(0)
        if self._dense is None:
            return 1.0 - self.epsilon * np.diag(self._m_inverse)
        return np.concatenate([self._leverages(block) for block in self._pool_blocks()])

    def _pool_blocks(self):
        """The pool's unit rows in float64 blocks of `_GRAM_ROWS` (the pool itself may be float32 and large)."""
        for start in range(0, self._pool_size, _GRAM_ROWS):
            yield unit_rows(self.pool[start:start + _GRAM_ROWS], "pool features", dtype=np.float64)

    def run(self, count: int) -> list[int]:
        """Keep up to `count` candidates greedily; returns their indices in the order kept."""
        while len(self.kept) < count:
            index = self.best()
            if index < 0:
                break
            self.keep(index)
        return self.kept


def select_logdet(candidate_ids: Sequence, candidate_features: np.ndarray, pool_features: np.ndarray | None,
                  count: int, *, clustering: Clustering | None = None,
                  epsilon: float = DEFAULT_EPSILON, form: str = "auto") -> pl.DataFrame:
    """Log-det rule: keep min(count, #candidates) candidates by greedy maximum volume.

    Candidates are processed in id order, so ties go to the lowest id and the input order does not
    matter. With a `clustering`, `cluster` and `cluster_size_at_decision` are filled as in the module
    docstring; without one they are −1 and 0. `form` forces the Gram or moment form of A⁻¹ (`GreedyLogDet`).
    """
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    return _greedy_selection("logdet", candidate_ids, candidate_features, pool_features, clustering, epsilon,
                             limit=count, novelty=False, form=form)


def select_novelty(candidate_ids: Sequence, candidate_features: np.ndarray, pool_features: np.ndarray, *,
                   clustering: Clustering | None = None, epsilon: float = DEFAULT_EPSILON,
                   count: int | None = None, form: str = "auto") -> pl.DataFrame:
    """Novelty rule: greedy log-det, keeping while the gain log(1 + ℓ(x)) ≥ τ, the pool's median
    leave-one-out gain (module docstring); `count` caps how many are kept. Copies (cosine ≥
    `COPY_COSINE` to a pool row or a kept candidate) are skipped. Ties, columns and `form` as `select_logdet`.
    """
    if count is not None and count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    return _greedy_selection("novelty", candidate_ids, candidate_features, pool_features, clustering, epsilon,
                             limit=count, novelty=True, form=form)


def _greedy_selection(rule: str, candidate_ids: Sequence, candidate_features: np.ndarray,
                      pool_features: np.ndarray | None, clustering: Clustering | None, epsilon: float,
                      limit: int | None, novelty: bool, form: str = "auto") -> pl.DataFrame:
    """Greedy maximum volume in id order, up to `limit` kept (None: no limit); with `novelty`, only
    while the gain reaches τ and never a copy. The rows of the `selection` table (module docstring)."""
    ids = _unique_ids(candidate_ids)
    n = len(ids)
    if clustering is not None:
        _, labels, _ = _prepare(ids, candidate_features, clustering)
        counts = np.asarray(clustering.sizes, dtype=np.int64).copy()
    else:
        labels, counts = np.full(n, -1, dtype=np.int64), None
    size_at = np.zeros(n, dtype=np.int64)
    kept = np.zeros(n, dtype=bool)
    leverage_at = np.full(n, np.nan)
    features = np.asarray(candidate_features)
    if n and (features.ndim != 2 or features.shape[0] != n):
        raise ValueError(f"candidate features must be a {n} × d matrix, got shape {features.shape}")
    if n:
        order = sorted(range(n), key=lambda i: ids[i])
        greedy = GreedyLogDet(pool_features, features[order], epsilon, form)
        threshold = novelty_threshold(greedy.pool_leverages()) if novelty else -np.inf
        nearest = _max_cosine(greedy.candidates, pool_features if novelty else None)  # pool, then what is kept
        while len(greedy.kept) < (n if limit is None else limit) and (position := greedy.best()) >= 0:
            if np.log1p(greedy.leverage[position]) < threshold:
                break
            if novelty and nearest[position] >= COPY_COSINE:
                greedy.skip(position)
                continue
            i = order[position]
            leverage_at[i] = greedy.leverage[position]
            greedy.keep(position)
            if novelty:
                nearest = np.maximum(nearest, greedy.candidates @ greedy.candidates[position])
            kept[i] = True
            if counts is not None:
                size_at[i] = counts[labels[i]]
                counts[labels[i]] += 1
        rejected = [p for p, i in enumerate(order) if not kept[i]]
        leverage_at[[order[p] for p in rejected]] = greedy.leverage[rejected]
    if counts is not None:
        size_at[~kept] = counts[labels[~kept]]
    return _frame(ids, labels, size_at, kept, rule, gains=np.log1p(leverage_at))


def novelty_threshold(pool_leverages: np.ndarray) -> float:
    """τ = median_p −log(1 − h_p): the median leave-one-out log-det gain of the pool rows (−∞
    without a pool: every candidate is new, and only the cap and the copy check limit what is kept)."""
    h = np.asarray(pool_leverages, dtype=np.float64)
    if not h.size:
        return -np.inf
    return float(np.median(-np.log1p(-np.minimum(h, 1 - 1e-12))))


def _max_cosine(candidates: np.ndarray, pool_features: np.ndarray | None) -> np.ndarray:
    """Per unit candidate row, its largest cosine to a pool row (−1 without a pool)."""
    best = np.full(candidates.shape[0], -1.0)
    if pool_features is None:
        return best
    for start in range(0, len(pool_features), _GRAM_ROWS):
        block = unit_rows(pool_features[start:start + _GRAM_ROWS], "pool features", dtype=np.float64)
        best = np.maximum(best, (candidates @ block.T).max(axis=1))
    return best


def _unique_ids(candidate_ids) -> list[str]:
    ids = [str(i) for i in candidate_ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"duplicate candidate id {dup!r}")
    return ids


def _prepare(candidate_ids, candidate_features, clustering):
    ids = _unique_ids(candidate_ids)
    features = np.asarray(candidate_features)
    if len(ids) == 0:
        return ids, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise ValueError(f"candidate features must be a {len(ids)} × d matrix, got shape {features.shape}")
    if features.shape[1] != clustering.dim:
        raise ValueError(f"candidate features have dimension {features.shape[1]} but the pool's "
                         f"centroids have {clustering.dim}")
    labels, cosine = assign(features, clustering.centroids)
    return ids, labels, cosine



def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via its Cholesky factor L: A⁻¹ = L⁻ᵀ L⁻¹."""
    lower_inverse = np.linalg.inv(np.linalg.cholesky(matrix))
    return lower_inverse.T @ lower_inverse


def _frame(ids, labels, sizes, kept, rule, gains=None) -> pl.DataFrame:
    gain = [None] * len(ids) if gains is None else [None if np.isnan(g) else float(g) for g in gains]
    return pl.DataFrame({"id": ids, "cluster": labels, "cluster_size_at_decision": sizes, "gain": gain,
                         "kept": kept, "rule": [rule] * len(ids)}, schema=schema("selection"))
