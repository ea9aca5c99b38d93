"""The diversity ladder of `prism study` (docs/study.md): subsets of one pool, all of the same size N, built
so that the diversity metrics can disagree about their order.

Rungs (n pool rows, a problem = a distinct prompt):

    duplicates m       m distinct problems, row i of the subset is problem i mod m (each repeated ⌊N/m⌋ or
                       ⌈N/m⌉ times), for m = 1, 2, 4, … < N and m = N; a rung whose m exceeds the pool's
                       problems is left out. m = 1 is the format-only subset: N copies of one problem
                       teach the answer format and almost nothing else.
    grad-clusters j    the pool's gradient features in k = `study.clusters` spherical k-means clusters
    emb-clusters j     (`prismatic.synthesis.kmeans`: faiss, k-means++ starts, the best of 3 restarts of 20
                       iterations); likewise its sentence embeddings.
                       An anchor cluster a is drawn among those whose j nearest clusters (cosine of the
                       centroids, a itself first) hold ≥ N rows; the subset is one random row of each of the
                       j clusters, then N − j rows drawn without repeats from the rest of their rows. It
                       draws from exactly j clusters. (No anchor qualifies: the one with the most rows, and
                       its rows repeat to fill N.)
    random d           N rows drawn uniformly without repeats.
    grad-logdet d      greedy maximum of log det(V_S V_Sᵀ), |S| = N, over the rows of a random half of
    emb-logdet d       the pool (the same half in both spaces for one d; the whole pool when n/2 < N), with V
                       the unit gradient features or the embeddings.

Every rung draws from its own generator, `numpy.random.default_rng([seed, family code, level])`, so a rung's
rows depend on the pool, its vectors, the seed and its own level only. `plan_order` interleaves the
families, each from its extremes inward, so that a study cut short still spans the range of diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prismatic.config import MetricsConfig
from prismatic.errors import PrismError

FAMILIES = ("duplicates", "grad-clusters", "emb-clusters", "random", "grad-logdet", "emb-logdet")
"""The ladder's families, in the order `plan_order` takes one rung of each; the index is the family code
of its random generator."""

FORMAT_ONLY = "duplicates-1"
"""The format-only subset: one problem, N times."""

KMEANS_ITERATIONS = 20
KMEANS_RESTARTS = 3

MORE_DIVERSE_IS_LOWER = ("compression_ratio", "self_repetition")
"""Metrics whose lower value means more diverse: they enter every correlation with their sign flipped."""

METRICS = ("distinct_problems", "gvendi", "embedding_vendi", "distinct_n", "ngram_vendi", "compression_ratio",
           "self_repetition")
"""The diversity of a subset, as `subset_diversity` measures it."""


@dataclass(frozen=True)
class Subset:
    """One rung: its name (`family-level`), family, level (m, j or the draw d) and pool rows (positions, in
    training order, repeats allowed)."""

    name: str
    family: str
    level: int
    rows: tuple[int, ...]


def duplicate_levels(size: int) -> tuple[int, ...]:
    """m of the duplicate rungs: the powers of two below `size`, then `size`."""
    levels = []
    m = 1
    while m < size:
        levels.append(m)
        m *= 2
    return (*levels, size)


def rung_rng(seed: int, family: str, level: int) -> np.random.Generator:
    """The generator of one rung: default_rng([seed, FAMILIES.index(family), level])."""
    return np.random.default_rng([seed, FAMILIES.index(family), level])


def first_of_each_problem(prompts: Sequence[str]) -> np.ndarray:
    """The position of each distinct prompt's first row, in pool order."""
    seen: dict[str, int] = {}
    for position, prompt in enumerate(prompts):
        seen.setdefault(prompt, position)
    return np.array(sorted(seen.values()), dtype=np.int64)


def duplicates_subset(problems: np.ndarray, m: int, size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """m rows drawn from `problems` (one row per distinct prompt), row i of the subset being chosen[i mod m]."""
    chosen = rng.choice(problems, m, replace=False)
    return tuple(int(chosen[i % m]) for i in range(size))


def nearest_clusters(centroids: np.ndarray, anchor: int, j: int) -> list[int]:
    """The anchor cluster, then the j − 1 others whose unit centroids have the highest cosine with its own."""
    similarity = centroids @ centroids[anchor]
    others = [int(c) for c in np.argsort(-similarity, kind="stable") if c != anchor]
    return [anchor, *others[:j - 1]]


def clusters_subset(labels: np.ndarray, centroids: np.ndarray, j: int, size: int,
                    rng: np.random.Generator) -> tuple[int, ...]:
    """N rows from exactly j clusters: the j nearest to an anchor cluster (module docstring)."""
    k = len(centroids)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    groups = [nearest_clusters(centroids, anchor, j) for anchor in range(k)]
    rows_of = [sum(len(members[c]) for c in group) for group in groups]
    eligible = [anchor for anchor in range(k) if rows_of[anchor] >= size]
    anchor = int(rng.choice(eligible)) if eligible else int(np.argmax(rows_of))
    group = groups[anchor]
    picked = [int(rng.choice(members[c])) for c in group]
    rest = np.setdiff1d(np.concatenate([members[c] for c in group]), picked)
    if len(rest) >= size - j:
        picked += [int(r) for r in rng.choice(rest, size - j, replace=False)]
    else:
        union = np.concatenate([np.array(picked), rest])
        picked += [int(r) for r in rest] + [int(r) for r in rng.choice(union, size - j - len(rest))]
    return tuple(picked)


def greedy_log_det(vectors: np.ndarray, candidates: np.ndarray, size: int) -> tuple[int, ...]:
    """Greedy maximum of log det(V_S V_Sᵀ) over |S| = size rows of `candidates`: each step adds the candidate
    whose residual (its part orthogonal to the span of the rows chosen so far, Gram–Schmidt) is longest.
    Past the rank of V, residuals are rounding noise and the step takes the longest of those."""
    residual = vectors[candidates].astype(np.float64).copy()
    chosen: list[int] = []
    for _ in range(size):
        lengths = np.einsum("ij,ij->i", residual, residual)
        lengths[chosen] = -1.0
        best = int(np.argmax(lengths))
        chosen.append(best)
        direction = residual[best] / np.sqrt(max(lengths[best], 1e-30))
        residual -= np.outer(residual @ direction, direction)
    return tuple(int(candidates[position]) for position in chosen)


def build_ladder(prompts: Sequence[str], features: np.ndarray, embeddings: np.ndarray, *, size: int,
                 seed: int, clusters: int, cluster_levels: Sequence[int], random_draws: int, logdet_draws: int,
                 duplicates: Sequence[int] | None = None) -> list[Subset]:
    """Every rung of the ladder (module docstring) for a pool of `len(prompts)` rows, whose unit gradient
    features and sentence embeddings are the rows of `features` and `embeddings`, in `plan_order`.
    `duplicates`: the m of the duplicate rungs (None: `duplicate_levels(size)`)."""
    from prismatic.synthesis.kmeans import spherical_kmeans

    n = len(prompts)
    problems = first_of_each_problem(prompts)
    ladder = [Subset(f"duplicates-{m}", "duplicates", m, duplicates_subset(problems, m, size,
                                                                         rung_rng(seed, "duplicates", m)))
              for m in (duplicates or duplicate_levels(size)) if m <= len(problems)]
    for family, vectors in (("grad-clusters", features), ("emb-clusters", embeddings)):
        clustering = spherical_kmeans(vectors, min(clusters, n), KMEANS_ITERATIONS, seed, init="kmeans++",
                                      restarts=KMEANS_RESTARTS, backend="faiss")
        for j in cluster_levels:
            if j > clustering.k:
                raise PrismError(f"study.cluster_levels: j = {j}, but the pool's {family.split('-')[0]} vectors form "
                                 f"only {clustering.k} distinct clusters")
            ladder.append(Subset(f"{family}-{j}", family, j, clusters_subset(
                clustering.labels, clustering.centroids, j, size, rung_rng(seed, family, j))))
    for d in range(random_draws):
        rows = rung_rng(seed, "random", d).choice(n, size, replace=False)
        ladder.append(Subset(f"random-{d}", "random", d, tuple(int(r) for r in rows)))
    for d in range(logdet_draws):
        half = np.sort(rung_rng(seed, "grad-logdet", d).choice(n, n // 2, replace=False)) if n // 2 >= size \
            else np.arange(n)
        for family, vectors in (("grad-logdet", features), ("emb-logdet", embeddings)):
            ladder.append(Subset(f"{family}-{d}", family, d, greedy_log_det(vectors, half, size)))
    return plan_order(ladder)


def spread(items: Sequence) -> list:
    """`items` from the ends inward: first, last, then the middle of each remaining gap, widest gap first
    ([1, 2, 4, 8, 16, 32, 64] → [1, 64, 8, 2, 16, 4, 32])."""
    if len(items) <= 2:
        return list(items)
    order = [0, len(items) - 1]
    gaps = [(0, len(items) - 1)]
    while gaps:
        gaps.sort(key=lambda gap: (gap[0] - gap[1], gap[0]))  # widest first, then leftmost
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        gaps += [(low, middle), (middle, high)]
    return [items[i] for i in order]


def plan_order(ladder: Sequence[Subset]) -> list[Subset]:
    """The ladder interleaved: one rung of each family in `FAMILIES` order, each family's rungs in `spread`
    order of their level, until every rung is placed. The format-only subset comes first."""
    queues = [spread(sorted((s for s in ladder if s.family == family), key=lambda s: s.level))
              for family in FAMILIES]
    ordered = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def subset_diversity(rows: Sequence[int], prompts: Sequence[str], texts: Sequence[str], features: np.ndarray,
                     embeddings: np.ndarray, config: MetricsConfig) -> dict[str, float]:
    """Every metric of `METRICS` on the subset's rows: its distinct problems (prompts), G-Vendi of its
    gradient features, embedding Vendi, and the text baselines of `prismatic.metrics.baselines` on `texts`
    (what `metrics.text` reads of a sample), with `metrics.max_n` and `metrics.repetition_n`."""
    from prismatic.metrics.baselines import compression_ratio, distinct_n, embedding_vendi, ngram_vendi, self_repetition
    from prismatic.metrics.vendi import gvendi

    picked = list(rows)
    chosen = [texts[i] for i in picked]
    return {"distinct_problems": float(len({prompts[i] for i in picked})), "gvendi": gvendi(features[picked]),
            "embedding_vendi": embedding_vendi(embeddings[picked]), "distinct_n": distinct_n(chosen, config.max_n),
            "ngram_vendi": ngram_vendi(chosen, config.max_n), "compression_ratio": compression_ratio(chosen),
            "self_repetition": self_repetition(chosen, config.repetition_n)}
