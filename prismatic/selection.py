"""The Prismatic Synthesis selection rule: keep candidates that land in sparse pool clusters.

The pool is clustered (`prismatic.kmeans.spherical_kmeans`) into k clusters of sizes s_0 … s_{k−1}
(pool members only). Each candidate i goes to its nearest pool centroid by cosine,

    c(i) = argmax_j cos(x_i, centroid_j)        (ties: lowest j),

and the sparsity threshold is the median pool cluster size

    m = median(s_0, …, s_{k−1})                 (numpy: mean of the two middle values when k is even).

Rules (Jung et al., 2025; DESIGN §8):
  paper     kept(i) ⇔ s_{c(i)} < m (strict). Every candidate is judged against the pool alone, so any
            number of candidates may pile into one sparse cluster. With k = 1, or all sizes equal,
            nothing is kept.
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

Both functions return one row per candidate, in input order, with the `selection` table's columns:
id (str), cluster (int64, the pool cluster), cluster_size_at_decision (int64: s_j for `paper`, n_j
just before the decision for `balanced`), kept (bool), rule (str). Ids must be unique; they are
compared as strings.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import polars as pl

from prismatic.kmeans import Clustering, assign

SCHEMA = {"id": pl.Utf8, "cluster": pl.Int64, "cluster_size_at_decision": pl.Int64, "kept": pl.Boolean,
          "rule": pl.Utf8}
RULES = ("paper", "balanced")


def sparse_threshold(sizes: np.ndarray) -> float:
    """m = numpy median of the pool cluster sizes; a cluster is sparse iff its size < m."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("cluster sizes must be a non-empty 1-D array")
    return float(np.median(sizes))


def select(rule: str, candidate_ids: Sequence, candidate_features: np.ndarray,
           clustering: Clustering, max_kept: int | None = None) -> pl.DataFrame:
    """Dispatch on `rule` ("paper" or "balanced"); `max_kept` only exists for "balanced"."""
    if rule == "paper":
        if max_kept is not None:
            raise ValueError("max_kept applies to the balanced rule only")
        return select_paper(candidate_ids, candidate_features, clustering)
    if rule == "balanced":
        return select_balanced(candidate_ids, candidate_features, clustering, max_kept=max_kept)
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")


def select_paper(candidate_ids: Sequence, candidate_features: np.ndarray,
                 clustering: Clustering) -> pl.DataFrame:
    """Paper rule: kept iff the pool size of the candidate's nearest cluster is < the median size."""
    ids, labels, _ = _prepare(candidate_ids, candidate_features, clustering)
    threshold = sparse_threshold(clustering.sizes)
    sizes = np.asarray(clustering.sizes, dtype=np.int64)[labels]
    return _frame(ids, labels, sizes, sizes < threshold, "paper")


def select_balanced(candidate_ids: Sequence, candidate_features: np.ndarray,
                    clustering: Clustering, *, max_kept: int | None = None) -> pl.DataFrame:
    """Balanced rule: like `paper`, but each kept candidate counts toward its cluster's size.

    Decision order, counts and the threshold are as in the module docstring. A candidate's
    `cluster_size_at_decision` is its cluster's count (pool + kept so far) just before its decision.
    `max_kept` (optional) caps how many candidates are kept in total; the sparsest clusters get the
    budget first.
    """
    if max_kept is not None and max_kept < 0:
        raise ValueError(f"max_kept must be ≥ 0, got {max_kept}")
    ids, labels, cosine = _prepare(candidate_ids, candidate_features, clustering)
    budget = len(ids) if max_kept is None else max_kept
    threshold = sparse_threshold(clustering.sizes)
    counts = np.asarray(clustering.sizes, dtype=np.int64).copy()
    n = len(ids)
    size_at = np.zeros(n, dtype=np.int64)
    kept = np.zeros(n, dtype=bool)
    # Per cluster: its candidates, best fit first (cosine descending, then id, then input position).
    queues: dict[int, list[int]] = {}
    for i in sorted(range(n), key=lambda i: (-float(cosine[i]), ids[i], i), reverse=True):
        queues.setdefault(int(labels[i]), []).append(i)  # reversed, so .pop() yields the best
    heap = [(int(counts[j]), -float(cosine[q[-1]]), ids[q[-1]], q[-1], j) for j, q in queues.items()]
    heapq.heapify(heap)
    while heap:
        count, _, _, i, j = heapq.heappop(heap)
        queues[j].pop()
        size_at[i] = count
        if count < threshold and budget > 0:
            kept[i] = True
            budget -= 1
            counts[j] += 1
        if queues[j]:
            nxt = queues[j][-1]
            heapq.heappush(heap, (int(counts[j]), -float(cosine[nxt]), ids[nxt], nxt, j))
    return _frame(ids, labels, size_at, kept, "balanced")


def _prepare(candidate_ids, candidate_features, clustering):
    ids = [str(i) for i in candidate_ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"duplicate candidate id {dup!r}")
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


def _frame(ids, labels, sizes, kept, rule) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "cluster": labels, "cluster_size_at_decision": sizes,
                         "kept": kept, "rule": [rule] * len(ids)}, schema=SCHEMA)
