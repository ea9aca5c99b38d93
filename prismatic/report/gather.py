"""What a round's atlas shows, read from the store: `gather(store, round_key) -> Atlas`.

The map's points are the pool as of the round and the round's candidates that were not kept (so
|points| = |pool of r(N−1)| + |candidates of rN|; in r000 the seeds). Each point has a status:

    seed                 a seed (pool origin `seed`)
    kept earlier         a generated pool row added before this round
    kept this round      a candidate of this round that joined the pool
    not kept this round  a candidate of this round that did not

The clustering shown is the one the round's selection was decided against: r(N−1)'s k-means
(`clusters`, `centroids` of r(N−1)); a candidate's cluster is its `selection.cluster` (nearest
centroid) and its size the pool size s_j of that cluster before the round. In r000 it is r000's own
k-means (the one r001 is judged against). A cluster is sparse when s_j < m, the median cluster size
(`prismatic.synthesis.selection.sparse_threshold`, the paper rule's threshold).

Reads: the pool as of the round (`prismatic.storage.deltas.read_as_of`) with its features
(`pool_features`), the round's verified samples, selection, features, rejections and generations, the
previous round's clusters and centroids, the votes and gains of the rounds that added pool rows (a few
columns each), and per round up to this one its diversity scores, selection outcome (file footer),
rejection reasons and the generation token columns when the table has them. Cost grows with the pool
and the round, plus a few small reads per earlier round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from prismatic.errors import PrismError
from prismatic.rounds import SEED_ROUND, is_round, previous_round, round_number
from prismatic.storage.base import Store
from prismatic.storage.deltas import read_as_of
from prismatic.synthesis.selection import sparse_threshold
from prismatic.synthesis.steps import pool_features

STATUSES = ("seed", "kept earlier", "kept this round", "not kept this round")
REJECTED = "rejected"
MAX_POINTS = 100_000
"""Default cap on the map's points; above it the map is a seeded sample (the page says so)."""
MAX_REJECTIONS = 20_000
"""Cap on the round's rejections listed in the sample table (a seeded sample above it)."""
EXAMPLES_PER_REASON = 3


@dataclass
class Atlas:
    """Everything the page draws, as frames (module docstring).

    points: one row per map point: id, status, round (added, or generated for candidates), task,
      prompt, response, answer, votes, majority_size, cluster, cluster_size, sparse, gain, gain_round,
      x, y. Rows beyond `max_points` are left out (a seeded sample; `total_points` counts them all).
    rejections: this round's rejections (id, reason, detail, text: the problem or the raw answer), at
      most `MAX_REJECTIONS`; `rejection_counts`: every reason's count in this round, unsampled.
    clusters: cluster, size (s_j), kept, not_kept (this round's candidates in it), sorted by size.
    rounds: one row per round up to this one: round, gvendi, gvendi_control, gain, control_gain,
      candidates, kept, rejected (rejection rows), tokens columns (`tokens_*`) when recorded.
    reasons: per round and reason, the count of rejection rows (round, reason, count).
    """

    round_key: str
    store_uri: str
    points: pl.DataFrame
    total_points: int
    status_counts: dict[str, int]
    rejections: pl.DataFrame
    rejection_counts: dict[str, int]
    clusters: pl.DataFrame
    threshold: float
    clustering_round: str
    rounds: pl.DataFrame
    reasons: pl.DataFrame
    projection: dict
    notes: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return len(self.points) < self.total_points


def check_round_in_store(store: Store, round_key: str) -> None:
    """A `PrismError` (one line naming the round and the store) unless round `round_key` has a pool and
    its gradient features there."""
    if not is_round(round_key):
        raise PrismError(f"option --round: expected a key like r002, got {round_key!r}")
    rounds = store.rounds("pool")
    if not rounds:
        raise PrismError(f"the store at {store.uri} has no rounds (no pool table): run a round first")
    if round_key not in rounds:
        raise PrismError(f"round {round_key} is not in the store at {store.uri} (its rounds: {', '.join(rounds)})")
    if not store.exists("gradient_features", round_key):
        raise PrismError(f"the store at {store.uri} has no gradient_features for round {round_key}: "
                         f"the map needs them (rematerialize gradient_features of {round_key})")


def latest_round(store: Store) -> str:
    """The latest round with diversity scores (a finished round), else with a pool."""
    rounds = store.rounds("diversity_scores") or store.rounds("pool")
    if not rounds:
        raise PrismError(f"the store at {store.uri} has no rounds (no pool table): run a round first")
    return rounds[-1]


def gather(store: Store, round_key: str, *, projection: str = "pca", max_points: int = MAX_POINTS,
           seed: int = 0) -> Atlas:
    """The atlas of round `round_key` (module docstring); `projection`: pca | umap."""
    from prismatic.report.projection import project

    check_round_in_store(store, round_key)
    if max_points < 1:
        raise PrismError(f"option --max-points: expected at least 1, got {max_points}")
    seed_round = round_key == SEED_ROUND
    pool = read_as_of(store, "pool", round_key)
    pool_x, _ = pool_features(store, pool)
    verified = store.read("verified_samples", round_key)
    selection = store.read("selection", round_key)
    features = store.read("gradient_features", round_key, ["id", "feature"])
    not_kept = selection.filter(~pl.col("kept"))
    others = verified.join(not_kept.select("id"), on="id", how="semi")
    other_x = _features_of(features, others["id"])
    clustering_round = round_key if seed_round else previous_round(round_key)
    clusters, threshold, assignment = _clustering(store, clustering_round, selection, seed_round)

    pool_map, other_map, about = project(pool_x, other_x, projection, seed=seed)
    others = others.select("id", pl.lit(round_key).alias("round"), "task", "prompt", "response", "answer", "votes",
                           "majority_size", pl.lit(STATUSES[3]).alias("status"))
    points = pl.concat([
        _pool_points(store, pool.with_columns(x=pool_map[:, 0], y=pool_map[:, 1]), round_key),
        others.with_columns(x=other_map[:, 0], y=other_map[:, 1]),
    ], how="diagonal_relaxed")
    points = (points.join(_gains(store, points, round_key, selection), on="id", how="left", maintain_order="left")
              .join(assignment, on="id", how="left", maintain_order="left")
              .with_columns(sparse=pl.col("cluster_size") < threshold))
    total = len(points)
    status_counts = {status: int(points.filter(status=status).height) for status in STATUSES}
    notes = []
    if total > max_points:
        points = _sample_points(points, max_points, seed)
        candidates = status_counts[STATUSES[2]] + status_counts[STATUSES[3]]
        notes.append(f"The map shows {len(points):,} of {total:,} points, a seeded uniform sample: "
                     f"{_count_current(points):,} of the {candidates:,} candidates of {round_key} (they take at most "
                     f"half the places unless the earlier pool leaves more) and the rest from the earlier pool.")
    rejections, rejection_counts = _rejections(store, round_key, seed)
    if sum(rejection_counts.values()) > len(rejections):
        notes.append(f"The sample table lists {len(rejections):,} of {sum(rejection_counts.values()):,} "
                     f"rejections of {round_key} (a seeded sample).")
    rounds, reasons = _rounds(store, round_key)
    return Atlas(round_key=round_key, store_uri=store.uri, points=points, total_points=total,
                 status_counts=status_counts, rejections=rejections, rejection_counts=rejection_counts,
                 clusters=clusters, threshold=threshold, clustering_round=clustering_round, rounds=rounds,
                 reasons=reasons, projection=about, notes=notes)


def _features_of(features: pl.DataFrame, ids: pl.Series) -> np.ndarray:
    """Feature rows of `ids`, in that order (n × d float32; 0 × d when there are none)."""
    table = pl.DataFrame({"id": ids}).join(features, on="id", how="left")
    if table["feature"].null_count():
        missing = table.filter(pl.col("feature").is_null())["id"].head(3).to_list()
        raise PrismError(f"candidates without gradient features, e.g. {missing}")
    width = features["feature"].dtype.size if len(features) else 1
    return np.asarray(table["feature"].to_numpy(), dtype=np.float32).reshape(len(table), width)


def _pool_points(store: Store, pool: pl.DataFrame, round_key: str) -> pl.DataFrame:
    """The pool's rows with their status, votes and majority size (seeds: 1 and 1)."""
    generated = [r for r in pool.filter(origin="generated")["round_added"].unique().to_list()]
    votes = [store.read("verified_samples", r, ["id", "votes", "majority_size"]) for r in generated]
    status = (pl.when(pl.col("origin") == "seed").then(pl.lit(STATUSES[0]))
              .when(pl.col("round_added") == round_key).then(pl.lit(STATUSES[2]))
              .otherwise(pl.lit(STATUSES[1])))
    frame = pool.select("id", pl.col("round_added").alias("round"), "task", "prompt", "response", "answer",
                        status.alias("status"), "x", "y")
    if votes:
        frame = frame.join(pl.concat(votes), on="id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(votes=pl.lit(None, pl.Int64), majority_size=pl.lit(None, pl.Int64))
    seed = pl.col("status") == STATUSES[0]
    return frame.with_columns(votes=pl.when(seed).then(1).otherwise("votes"),
                              majority_size=pl.when(seed).then(1).otherwise("majority_size"))


def _gains(store: Store, points: pl.DataFrame, round_key: str, selection: pl.DataFrame) -> pl.DataFrame:
    """id, gain, gain_round: each generated row's selection gain (nats) in the round that decided it."""
    earlier = [r for r in points.filter(status=STATUSES[1])["round"].unique().to_list()]
    frames = [store.read("selection", r, ["id", "gain"]).with_columns(gain_round=pl.lit(r)) for r in earlier]
    if round_key != SEED_ROUND:
        frames.append(selection.select("id", "gain", gain_round=pl.lit(round_key)))
    if not frames:
        return pl.DataFrame(schema={"id": pl.String, "gain": pl.Float64, "gain_round": pl.String})
    return pl.concat(frames)


def _clustering(store: Store, clustering_round: str, selection: pl.DataFrame, seed_round: bool
                ) -> tuple[pl.DataFrame, float, pl.DataFrame]:
    """(clusters: cluster, size, kept, not_kept sorted by size; threshold m; assignment: id → cluster,
    cluster_size) of the clustering the round was judged against (module docstring)."""
    sizes = store.read("centroids", clustering_round, ["cluster", "size"])
    threshold = sparse_threshold(sizes["size"].to_numpy())
    assignment = store.read("clusters", clustering_round, ["id", "cluster", "cluster_size"])
    if seed_round:
        decided = pl.DataFrame(schema={"cluster": pl.Int64, "kept": pl.Boolean})
    else:
        decided = selection.select("cluster", "kept")
        candidates = selection.select("id", "cluster").join(sizes.rename({"size": "cluster_size"}), on="cluster",
                                                             how="left")
        assignment = pl.concat([assignment.join(candidates, on="id", how="anti"), candidates])
    counts = decided.group_by("cluster").agg(kept=pl.col("kept").sum(), not_kept=(~pl.col("kept")).sum())
    clusters = (sizes.join(counts, on="cluster", how="left")
                .with_columns(pl.col("kept", "not_kept").fill_null(0).cast(pl.Int64))
                .sort("size", "cluster"))
    return clusters, threshold, assignment


def _count_current(points: pl.DataFrame) -> int:
    return points.filter(pl.col("status").is_in([STATUSES[2], STATUSES[3]])).height


def _sample_points(points: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """`limit` points: this round's candidates, at most half the places unless the rest of the pool leaves
    more (a seeded sample of them above that), and a seeded sample of the other points in the places left."""
    current = pl.col("status").is_in([STATUSES[2], STATUSES[3]])
    candidates, rest = points.filter(current), points.filter(~current)
    keep_candidates = min(len(candidates), max(limit // 2, limit - len(rest)))
    picked_candidates = candidates.sample(keep_candidates, seed=seed) if keep_candidates < len(candidates) \
        else candidates
    picked_rest = rest.sample(min(len(rest), limit - keep_candidates), seed=seed)
    return pl.concat([picked_rest, picked_candidates]).sort("round", "id")


def _rejections(store: Store, round_key: str, seed: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """This round's rejections with the problem's text (or, for a request without a problem, the detail),
    at most `MAX_REJECTIONS`, and every reason's count."""
    empty = pl.DataFrame(schema={"id": pl.String, "reason": pl.String, "detail": pl.String, "text": pl.String})
    if not store.exists("rejections", round_key):
        return empty, {}
    rejections = store.read("rejections", round_key)
    counts = dict(sorted(rejections.group_by("reason").len().iter_rows(), key=lambda kv: (-kv[1], kv[0])))
    if len(rejections) > MAX_REJECTIONS:
        rejections = rejections.sample(MAX_REJECTIONS, seed=seed)
    if rejections.is_empty():
        return empty, counts
    problems = store.read("generations", round_key, ["id", "kind", "text"]).filter(kind="problem")
    frame = rejections.join(problems.select("id", "text"), on="id", how="left", maintain_order="left")
    return frame.with_columns(text=pl.coalesce("text", "detail")).sort("reason", "id"), counts


def _rounds(store: Store, round_key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per round up to `round_key`: the pool G-Vendi, the control, the selection's gain and the control's,
    candidates, kept, rejection rows and the generation token columns; and the rejection reasons' counts."""
    number = round_number(round_key)
    rows, reasons = [], []
    for r in [r for r in store.rounds("diversity_scores") if round_number(r) <= number]:
        scores = dict(store.read("diversity_scores", r, ["metric", "value"]).iter_rows())
        row = {"round": r, "gvendi": scores.get("gvendi"), "gvendi_control": scores.get("gvendi_control")}
        if store.exists("selection", r):
            outcome = store.read_metadata("selection", r).get("outcome") or {}
            kept = store.read("selection", r, ["kept"])["kept"]
            row |= {"gain": outcome.get("gain"), "control_gain": outcome.get("control_gain"),
                    "candidates": len(kept), "kept": int(kept.sum())}
        if r != SEED_ROUND and store.exists("rejections", r):
            found = store.read("rejections", r, ["reason"]).group_by("reason").len()
            reasons += [{"round": r, "reason": reason, "count": count} for reason, count in found.iter_rows()]
            row["rejected"] = int(found["len"].sum())
        if r != SEED_ROUND and store.exists("generations", r):
            row |= _tokens(store, r)
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None)
    reason_frame = pl.DataFrame(reasons, schema={"round": pl.String, "reason": pl.String, "count": pl.Int64})
    return frame, reason_frame


def _tokens(store: Store, round_key: str) -> dict[str, int]:
    """`tokens_<column>`: the sum of every integer column of `generations` whose name holds 'token' and
    that has a value (stores written before generations recorded tokens have no such column)."""
    schema = store.read_schema("generations", round_key)
    names = [name for name, dtype in schema.items() if "token" in name and dtype.is_integer()]
    if not names:
        return {}
    frame = store.read("generations", round_key, names)
    return {f"tokens_{name}": int(frame[name].sum()) for name in names if frame[name].null_count() < len(frame)}
