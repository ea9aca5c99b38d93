"""Spherical k-means on unit feature rows (faiss), and nearest-centroid assignment by cosine.

For unit rows x_1 … x_n ∈ R^d and k unit centroids c_1 … c_k, spherical k-means maximizes

    J = (1/n) Σ_i max_j ⟨x_i, c_j⟩         (mean cosine of each row to its centroid)

by Lloyd iterations: assign each row to argmax_j ⟨x_i, c_j⟩, then set c_j = m_j / ‖m_j‖ with m_j the
sum of the rows assigned to j. Training is faiss's `Kmeans(d, k, niter, spherical=True, seed)` on
float32 rows; an empty cluster during training is re-seeded by faiss by splitting a large one; every
row is used (no subsampling) and faiss prints nothing. Prismatic Synthesis (Jung et al., 2025)
clusters the pool's gradient features with k = ratio × |pool| (ratio 0.1 in the paper's code, 0.01
in its text) and 20 iterations, with faiss's defaults otherwise, which are this module's defaults:
`init="random"` (k distinct random rows) and `restarts=1`. Random starts can end in a local optimum
that merges two true clusters and splits another even when the clusters are far apart (about 1 run
in 5 for 4 orthogonal blobs; about 1 in 2 for a 4-row blob beside 40- and 10-row ones, which is
the sparse cluster selection looks for); `restarts=r` runs r seeded trainings and keeps the one with the
highest objective (faiss `nredo`), and `init="kmeans++"` (D²-weighted starts, one O(nkd) pass) or
`init="afk-mc2"` (its MCMC approximation, cheaper for large k) start better.

After training, the returned labels are one more assignment step against faiss's final centroids,
so `assign(features, result.centroids)` reproduces `result.labels` (a candidate identical to a pool
row lands in that row's cluster). Empty clusters are then removed in two steps:
  1. re-seed: each empty centroid is replaced by a pool row, worst-fitting rows first (lowest cosine
     to their own centroid, taken only from clusters with ≥ 2 rows and only if that cosine is < 1),
     and all rows are re-assigned; repeated while empties remain and such rows exist. Each re-seed
     strictly raises J.
  2. drop: clusters that stay empty (the rows have fewer than k distinct directions) are dropped and
     the remaining ones relabelled 0 … k'−1 in their original order, so `result.k` can be < k.
Ties in the argmax go to the lowest centroid index.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

INIT_METHODS = {
    "random": faiss.ClusteringInitMethod_RANDOM,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    "afk-mc2": faiss.ClusteringInitMethod_AFK_MC2,
}
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
                     init: str = "random", restarts: int = 1) -> Clustering:
    """Cluster the rows of `features` (n × d; normalized here) into at most k non-empty clusters.

    See the module docstring for the algorithm, the `init`/`restarts` options and how empty
    clusters are removed. The result is a function of (features, k, iterations, seed, init,
    restarts); faiss takes the seed modulo 2³¹. k must satisfy 1 ≤ k ≤ n (`num_clusters` clips).
    """
    x = _unit_rows(features, "features")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    if iterations < 0:
        raise ValueError(f"iterations must be ≥ 0, got {iterations}")
    if init not in INIT_METHODS:
        raise ValueError(f"unknown k-means init {init!r}; expected one of {', '.join(INIT_METHODS)}")
    if restarts < 1:
        raise ValueError(f"restarts must be ≥ 1, got {restarts}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(
        d, int(k), niter=int(iterations), spherical=True, seed=int(seed) & 0x7FFFFFFF, verbose=False,
        nredo=int(restarts), init_method=INIT_METHODS[init],
        min_points_per_centroid=1,  # no "please provide at least …" warning for small pools
        max_points_per_centroid=-(-n // k),  # ≥ n / k: faiss never subsamples the rows
    )
    km.train(x)
    centroids = _normalize(np.array(km.centroids, dtype=np.float32).reshape(k, d))
    labels, sim = assign(x, centroids)
    centroids, labels, sim = _reseed_empty(x, centroids, labels, sim)
    centroids, labels = _drop_empty(centroids, labels)
    sizes = np.bincount(labels, minlength=centroids.shape[0]).astype(np.int64)
    return Clustering(centroids=centroids, labels=labels, sizes=sizes, similarity=sim,
                      mean_similarity=float(np.mean(sim, dtype=np.float64)))


def assign(features: np.ndarray, centroids: np.ndarray, chunk_rows: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine: labels[i] = argmax_j cos(x_i, c_j) (ties: lowest j), and that cosine.

    Rows and centroids are normalized here. Similarities are computed `chunk_rows` rows at a time
    (default: about 16 M entries a block), so the n × k matrix is never held. float64 input is
    computed in float64, anything else in float32. Returns (labels int64 (n,), cosine (n,)).
    """
    x = _unit_rows(features, "features")
    c = _unit_rows(centroids, "centroids")
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


def _unit_rows(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    elif a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return _normalize(a, name)


def _normalize(a: np.ndarray, name: str = "centroids") -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return a / norms


def _reseed_empty(x, centroids, labels, sim):
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
        labels, sim = assign(x, centroids)
    return centroids, labels, sim


def _drop_empty(centroids, labels):
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    keep = np.flatnonzero(sizes > 0)
    if keep.size == centroids.shape[0]:
        return centroids, labels
    relabel = np.full(centroids.shape[0], -1, dtype=np.int64)
    relabel[keep] = np.arange(keep.size)
    return np.ascontiguousarray(centroids[keep]), relabel[labels]
