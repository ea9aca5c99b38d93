"""Spherical k-means on unit feature rows (faiss, or bfloat16 matmuls with exact labels), and
nearest-centroid assignment by cosine.

For unit rows x_1 … x_n ∈ R^d and k unit centroids c_1 … c_k, spherical k-means maximizes

    J = (1/n) Σ_i max_j ⟨x_i, c_j⟩         (mean cosine of each row to its centroid)

by Lloyd iterations: assign each row to argmax_j ⟨x_i, c_j⟩, then set c_j = m_j / ‖m_j‖ with m_j the
sum of the rows assigned to j. Prismatic Synthesis (Jung et al., 2025) clusters the pool's gradient
features with k = ratio × |pool| (ratio 0.1 in the paper's code, 0.01 in its text) and 20
iterations, with faiss's defaults otherwise, which are this module's defaults: `init="random"` (k
distinct random rows) and `restarts=1`. Random starts can end in a local optimum that merges two
true clusters and splits another even when the clusters are far apart (about 1 run in 5 for 4
orthogonal blobs; about 1 in 2 for a 4-row blob beside 40- and 10-row ones, which is the sparse
cluster selection looks for); `restarts=r` runs r seeded trainings and keeps the one with the
highest objective, and `init="kmeans++"` (D²-weighted starts, one O(nkd) pass) or `init="afk-mc2"`
(its MCMC approximation, cheaper for large k) start better.

Two backends train the centroids (`backend=`):
  faiss: `faiss.Kmeans(d, k, niter, spherical=True, seed, nredo=restarts)` on float32 rows; an empty
    cluster during training is re-seeded by faiss by splitting a large one; every row is used (no
    subsampling), faiss stops early once an iteration leaves J unchanged, and prints nothing. All
    three inits.
  bf16: Lloyd iterations in torch (`prismatic.synthesis.kmeans_bf16`; torch's default threads),
    `init="random"` only: k distinct row indices drawn by `numpy.random.default_rng(seed mod 2³¹).choice(n, k,
    replace=False)`, one draw per restart from the one generator (not faiss's draw: the two backends
    start differently for the same seed); "kmeans++" and "afk-mc2" raise ValueError (use faiss).
    A cluster left empty by an assignment keeps its previous centroid; an assignment step that
    changes no label is a fixed point (every later step would repeat it), so training stops there.
    Restarts keep the run with the highest J (the first on ties). Each assignment step gives the
    labels of the exact argmax at about a quarter of float32's matmul cost, by two devices:
    1. bf16 blocks with a proven error bound. Rows are cast to bfloat16 once, centroids once per
       step; X·Cᵀ is a bf16 matmul accumulated in float32 and rounded to bf16. For unit x, c every
       entry v is within M of ⟨x, c⟩: rounding x and c (unit roundoff u = 2⁻⁸) moves Σ x_l c_l by
       ≤ (2u + u²) Σ|x_l c_l| ≤ 2⁻⁷ + 2⁻¹⁶ (Cauchy–Schwarz: Σ|x_l c_l| ≤ ‖x‖‖c‖ = 1), the float32
       sum adds ≲ d·2⁻²⁴ and the bf16 output ≲ 2⁻⁸, so M(d) = max(2⁻⁶, 3·2⁻⁸ + d·2⁻²²) bounds the
       total (M = 2⁻⁶ ≈ 0.0156 cosine for d ≤ 2¹⁴; the terms sum to ≈ 0.0118 at d = 1024). With
       v₀ the row's largest entry, a centroid whose entry is < v₀ − 2M has cosine < v₀ − M ≤ the
       cosine of the bf16 argmax, so it cannot be the argmax. If only the bf16 argmax is within 2M
       of v₀ (v₀ − v₁ > 2M), it is the exact argmax; else the centroids within 2M (≤ 32 of them)
       are re-scored in float32, or, past 32, the row against all k. No label depends on bf16
       rounding; ties go to the lowest centroid index, as in `assign`.
    2. Hamerly's bounds, for cosine. A centroid moving c → c′ changes ⟨x, c⟩ by at most
       δ = ‖c′ − c‖ (Cauchy–Schwarz, ‖x‖ = 1). Each row keeps lower_i ≤ its cosine to its own
       centroid a(i) and upper_i ≥ its cosine to every other one (from step 1: v₀ − M and the
       runner-up's v + M, or float32 values); after each update lower_i −= δ_a(i) and, as the
       m = min(128, ⌊k/16⌋) centroids that moved most are scored anew (one n × m bf16 block, m/k
       of a step),
       upper_i = max(upper_i + δ₍ₘ₊₁₎, v_ij + M over those j ≠ a(i)), δ₍ₘ₊₁₎ the (m+1)-th largest
       move (Hamerly's own bound adds the largest: a few centroids jumping in a split or merge would
       loosen every row's bound). Bounds and δ are float64. A step re-scores a row only if
       lower_i < upper_i + ε: its own cosine (one float32 dot, O(d)) replaces lower_i, and only if
       still lower_i < upper_i + ε is it scored against all k (O(kd)); the dot is skipped when it
       cannot lift lower_i far enough (it adds at most 2M + 2Σδ_a(i) since the row was scored).
       ε = d·2⁻²² (2.4·10⁻⁴ at d = 1024) is twice the worst-case error of the two float32 dots
       behind the bounds, so a skipped row's own cosine exceeds all others: its label is still the
       argmax.
    So every step's labels are `assign`'s up to float32 rounding (where two cosines lie within
    ≈ d·2⁻²⁴ of each other any float32 computation may pick either): the same Lloyd steps.
`backend="auto"` (the default) takes bf16 when init = "random", n·k·d ≥ AUTO_BF16_MIN_WORK = 10¹⁰
multiply-adds per assignment step and `fast_bf16_matmul()` (torch has oneDNN enabled and the CPU
AVX512-BF16 or AMX-BF16); otherwise faiss. The threshold is where bf16 became the faster of the two on
both clustered and unstructured rows (the crossover measurements: benchmarks/results/measurements.md,
"From the code"); below it the per-step overhead (top-2, re-scoring, bounds) eats the cheaper matmul on
unstructured rows. At d = 1024 and k = n/10 the threshold is pools of ≥ 9,900 rows; every pool in the
tests stays on faiss.

After training, the returned labels are one more assignment step against the final centroids (faiss:
`assign`; bf16: a bounded step as above), so `assign(features, result.centroids)` reproduces
`result.labels` (a candidate identical to a pool row lands in that row's cluster). Empty clusters
are then removed in two steps:
  1. re-seed: each empty centroid is replaced by a pool row, worst-fitting rows first (lowest cosine
     to their own centroid, taken only from clusters with ≥ 2 rows and only if that cosine is < 1),
     and all rows are re-assigned; repeated while empties remain and such rows exist. Each re-seed
     strictly raises J.
  2. drop: clusters that stay empty (the rows have fewer than k distinct directions) are dropped and
     the remaining ones relabelled 0 … k'−1 in their original order, so `result.k` can be < k.
Ties in the argmax go to the lowest centroid index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from prismatic.synthesis.kmeans_bf16 import fast_bf16_matmul, train_bf16

INIT_METHODS = {
    "random": faiss.ClusteringInitMethod_RANDOM,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    "afk-mc2": faiss.ClusteringInitMethod_AFK_MC2,
}
BACKENDS = ("auto", "faiss", "bf16")
# "auto" takes bf16 from this many multiply-adds per assignment step (n·k·d) on; see the module docstring.
AUTO_BF16_MIN_WORK = 10**10
# Rows × centroids entries of one similarity block in `assign` (float32: 64 MiB).
_BLOCK_ENTRIES = 1 << 24
_ONE = 1.0 - 1e-6  # cosine at or above this counts as "identical to its centroid" when re-seeding


@dataclass(frozen=True)
class Clustering:
    """A partition of n unit rows into k non-empty clusters.

    centroids: k × d float32, unit rows. labels: (n,) int64 in [0, k). sizes: (k,) int64, all ≥ 1,
    sizes[j] = #{i : labels[i] = j}. similarity: (n,) float32, ⟨x_i, centroids[labels[i]]⟩.
    mean_similarity: the objective J = mean(similarity).
    """

    centroids: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    similarity: np.ndarray
    mean_similarity: float

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])


def num_clusters(pool_size: int, ratio: float) -> int:
    """k = max(1, round(ratio × pool_size)), clipped to pool_size (Python's round: half to even)."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    if not ratio > 0:
        raise ValueError(f"cluster ratio must be positive, got {ratio}")
    return min(pool_size, max(1, round(ratio * pool_size)))


def spherical_kmeans(features: np.ndarray, k: int, iterations: int = 20, seed: int = 0, *,
                     init: str = "random", restarts: int = 1, backend: str = "auto") -> Clustering:
    """Cluster the rows of `features` (n × d; normalized here) into at most k non-empty clusters.

    See the module docstring for the algorithm, the `init`/`restarts` options, the backends ("auto",
    "faiss", "bf16"; `resolve_backend` says which "auto" takes) and how empty clusters are removed.
    The result is a function of (features, k, iterations, seed, init, restarts, the backend taken);
    both backends take the seed modulo 2³¹. k must satisfy 1 ≤ k ≤ n (`num_clusters` clips).
    """
    x = unit_rows(features, "features", allow_empty=False)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    if iterations < 0:
        raise ValueError(f"iterations must be ≥ 0, got {iterations}")
    if init not in INIT_METHODS:
        raise ValueError(f"unknown k-means init {init!r}; expected one of {', '.join(INIT_METHODS)}")
    if restarts < 1:
        raise ValueError(f"restarts must be ≥ 1, got {restarts}")
    backend = resolve_backend(backend, n, k, d, init)
    if backend == "bf16" and init != "random":
        raise ValueError(f"init={init!r} is implemented by the faiss backend only; use backend='faiss' "
                         "(or 'auto', which takes faiss for it)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    seed = int(seed) & 0x7FFFFFFF
    if backend == "faiss":
        centroids = _train_faiss(x, int(k), int(iterations), seed, INIT_METHODS[init], int(restarts))
        labels, sim = assign(x, centroids)
        reassign = functools.partial(assign, x)
    else:
        centroids, labels, sim, reassign = train_bf16(x, int(k), int(iterations), seed, int(restarts))
    centroids, labels, sim = _reseed_empty(x, centroids, labels, sim, reassign)
    centroids, labels = _drop_empty(centroids, labels)
    sizes = np.bincount(labels, minlength=centroids.shape[0]).astype(np.int64)
    return Clustering(centroids=centroids, labels=labels, sizes=sizes, similarity=sim,
                      mean_similarity=float(np.mean(sim, dtype=np.float64)))


def resolve_backend(backend: str, n: int, k: int, d: int, init: str = "random") -> str:
    """The backend `spherical_kmeans` uses: `backend` itself unless "auto"; "auto" gives "bf16" when
    init == "random", n·k·d ≥ AUTO_BF16_MIN_WORK and `fast_bf16_matmul()`, else "faiss"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    large = n * k * d >= AUTO_BF16_MIN_WORK
    return "bf16" if init == "random" and large and fast_bf16_matmul() else "faiss"


def assign(features: np.ndarray, centroids: np.ndarray, chunk_rows: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine: labels[i] = argmax_j cos(x_i, c_j) (ties: lowest j), and that cosine.

    Rows and centroids are normalized here. Similarities are computed `chunk_rows` rows at a time
    (default: about 16 M entries a block), so the n × k matrix is never held. float64 input is
    computed in float64, anything else in float32. Returns (labels int64 (n,), cosine (n,)).
    """
    x = unit_rows(features, "features", allow_empty=False)
    c = unit_rows(centroids, "centroids", allow_empty=False)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"features have dimension {x.shape[1]} but centroids have {c.shape[1]}")
    dtype = np.float64 if np.float64 in (x.dtype, c.dtype) else np.float32
    x, c = x.astype(dtype, copy=False), c.astype(dtype, copy=False)
    n, k = x.shape[0], c.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, _BLOCK_ENTRIES // max(k, 1))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
    labels = np.empty(n, dtype=np.int64)
    cosine = np.empty(n, dtype=dtype)
    ct = np.ascontiguousarray(c.T)
    for start in range(0, n, chunk_rows):
        block = x[start:start + chunk_rows] @ ct
        best = np.argmax(block, axis=1)
        labels[start:start + chunk_rows] = best
        cosine[start:start + chunk_rows] = block[np.arange(block.shape[0]), best]
    return labels, cosine


def _train_faiss(x: np.ndarray, k: int, iterations: int, seed: int, init_method: int, restarts: int
                 ) -> np.ndarray:
    n, d = x.shape
    km = faiss.Kmeans(
        d, k, niter=iterations, spherical=True, seed=seed, verbose=False, nredo=restarts,
        init_method=init_method,
        min_points_per_centroid=1,  # no "please provide at least …" warning for small pools
        max_points_per_centroid=-(-n // k),  # ≥ n / k: faiss never subsamples the rows
    )
    km.train(x)
    return unit_rows(np.array(km.centroids, dtype=np.float32).reshape(k, d), "centroids")


def _reseed_empty(x, centroids, labels, sim,
                  reassign: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
    """Module docstring, step 1; `reassign(centroids)` gives (labels, cosine) of all rows."""
    k = centroids.shape[0]
    for _ in range(k):
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if empty.size == 0:
            break
        order = np.lexsort((np.arange(x.shape[0]), sim))  # worst fit first, then row index
        donors = order[(sizes[labels[order]] >= 2) & (sim[order] < _ONE)]
        if donors.size == 0:
            break
        m = min(empty.size, donors.size)
        centroids = centroids.copy()
        centroids[empty[:m]] = x[donors[:m]]
        labels, sim = reassign(centroids)
    return centroids, labels, sim


def _drop_empty(centroids, labels):
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    keep = np.flatnonzero(sizes > 0)
    if keep.size == centroids.shape[0]:
        return centroids, labels
    relabel = np.full(centroids.shape[0], -1, dtype=np.int64)
    relabel[keep] = np.arange(keep.size)
    return np.ascontiguousarray(centroids[keep]), relabel[labels]


def unit_rows(features, name: str = "features", *, dtype: type | None = None, allow_empty: bool = True) -> np.ndarray:
    """Rows of a 2-D array scaled to unit L2 norm, x_i / ‖x_i‖₂, in numpy (no torch import; the torch twin is
    `prismatic.metrics.vendi.normalize_rows`).

    dtype: the result's dtype; None keeps float32 and float64, turns other floats into float32 and
    integers into float64. A row of zeros (no direction), NaN or ±inf is refused with a `ValueError`
    naming `name`; `allow_empty=False` refuses an array without rows or columns too.
    """
    x = np.asarray(features)
    if x.ndim != 2 or (not allow_empty and (x.shape[0] == 0 or x.shape[1] == 0)):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}2-D array, got shape {x.shape}")
    if dtype is not None:
        x = x.astype(dtype, copy=False)
    elif not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return x / norms
