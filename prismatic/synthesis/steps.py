"""One Prismatic Synthesis round as pure table transformations: one step per asset (docs/architecture.md).

    seeds ─▶ r000: the seeds are the verified samples, all kept, and form the pool
    pool(r−1) ──generations_step──▶ generations ──verified_samples_step──▶ verified candidates
      ──feature_shard_step ×S, gradient_features_step──▶ features ──selection_step (pool(r−1)'s centroids)──▶
      kept ──pool_step──▶ pool(r) (what r adds; the pool as of r: prismatic.storage.deltas.read_as_of)
      ──clusters_step──▶ clusters, centroids ──diversity_scores_step──▶ scores

Each step takes frames, arrays and config (and an engine, journal or proxy callable where it needs
one) and returns a `StepOutput`: the tables to write, the provenance each file carries, and plain
facts for the asset's metadata. The seed round (r000) is a branch of each step, never of its
caller. The Dagster assets (`prism_assets`) read their inputs from the store, call their step and
write its output with `StepOutput.write`; `benchmarks/round.py` runs round r000 with the same steps
and the same write rule, without Dagster. Table columns: `prismatic.storage.schema` (docs/data-model.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from prismatic.config import MetricsConfig, PrismConfig, SynthesisConfig
from prismatic.errors import PrismError
from prismatic.gradients.featureset import FeatureSet, Shard, feature_table, merge_feature_sets
from prismatic.metrics.vendi import gvendi
from prismatic.rounds import SEED_ROUND, round_number, sort_rounds
from prismatic.storage.schema import empty, schema
from prismatic.synthesis.control import selection_outcome
from prismatic.synthesis.generate import ProblemNLL, generate_round
from prismatic.synthesis.kmeans import Clustering, num_clusters, spherical_kmeans
from prismatic.synthesis.selection import POOL_FEATURE_RULES, select
from prismatic.synthesis.verify import extract_answer, majority_vote, math_equal, nli_label

if TYPE_CHECKING:
    from prismatic.config import PriceTable
    from prismatic.generation.engines.base import Engine
    from prismatic.generation.journal import Journal
    from prismatic.generation.usage import Budget
    from prismatic.storage.base import Store
    from prismatic.storage.catalog import Catalog


@dataclass
class StepOutput:
    """What a round step returns.

    tables: table → frame, in write order; the table named like the asset is the asset's own (its
      data version and row count are the asset's).
    provenance: table → what its file records beside round, run and asset (JSON values).
    facts: plain values (int, float, str, dict, list) for the asset's metadata.
    """

    tables: dict[str, pl.DataFrame]
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def write(self, catalog: Catalog, key: str, *, run_id: str, asset: str, **read: Any) -> None:
        """Write every table to round `key` through `catalog` (`Catalog.write_partition`: the store,
        atomically, then the DuckDB views when a table needs one), each file with the provenance
        {round, run_id, asset, **self.provenance[table]}; `read` (what the asset read from the
        previous round) is added to the asset's own table."""
        for table, frame in self.tables.items():
            provenance = {**self.provenance.get(table, {}), **(read if table == asset else {})}
            catalog.write_partition(table, key, frame, {"round": key, "run_id": run_id, "asset": asset, **provenance})


# ------------------------------------------------------------------------------------ reading helpers


def pool_gvendi(store: Store, key: str) -> float:
    """The G-Vendi of round `key`'s pool, as its `diversity_scores` recorded it."""
    return float(store.read("diversity_scores", key).filter(metric="gvendi")["value"][0])


def pool_features(store: Store, pool: pl.DataFrame) -> tuple[np.ndarray, dict]:
    """Features of every pool row (n × d float32, in pool order), gathered from the `gradient_features`
    of the rounds that added them, and their projection (proxy and the projection's identity).

    `pool` needs `id` and `round_added`. Each round's file is read (its `id` and `feature` columns) one
    at a time and only its pool rows are kept, so memory holds the pool's n × d and one round's file,
    not every candidate of every round. Features made with different projections (proxy, mode, dim,
    seed) are refused, never mixed.
    """
    positions = pool.select("id", "round_added").with_row_index("position")
    out, projection, first_round = None, None, None
    filled = np.zeros(len(pool), dtype=bool)
    for round_added in sort_rounds(pool["round_added"].unique().to_list()):
        meta = store.read_metadata("gradient_features", round_added)
        identity = {"proxy": meta.get("proxy"), **(meta.get("projection") or {})}
        if projection is None:
            projection, first_round = identity, round_added
        elif identity != projection:
            raise PrismError(f"gradient_features of {round_added} were made with a different projection than "
                             f"{first_round} ({identity} vs {projection}); rematerialize them with one config")
        stored = store.read("gradient_features", round_added, columns=["id", "feature"])
        matched = positions.filter(round_added=round_added).join(stored, on="id", how="inner")
        if not len(matched):
            continue
        x = np.asarray(matched["feature"].to_numpy(), dtype=np.float32)
        out = np.empty((len(pool), x.shape[1]), dtype=np.float32) if out is None else out
        rows = matched["position"].to_numpy()
        out[rows] = x
        filled[rows] = True
    if not filled.all():
        missing = pool["id"].filter(pl.Series(~filled)).head(3).to_list()
        raise PrismError(f"pool rows without gradient features, e.g. {missing}")
    return (np.zeros((0, 1), dtype=np.float32) if out is None else out), projection or {}


def cached_embeddings(store: Store, key: str, metrics: MetricsConfig) -> pl.DataFrame | None:
    """The sentence embeddings (`digest`, `embedding`) that the rounds before `key` encoded with
    `metrics.embedding_model` over `metrics.text` (their `embeddings` partitions), or None when
    `embedding_vendi` is not among `metrics.names`. Each partition holds only what its round encoded, so
    this reads one row per pool text at most (and rows of texts no longer in the pool).
    """
    if "embedding_vendi" not in metrics.names:
        return None
    number = round_number(key)
    frames = [store.read("embeddings", r, columns=["digest", "embedding", "encoder", "text"])
              .filter(encoder=metrics.embedding_model, text=metrics.text)
              for r in sort_rounds(store.rounds("embeddings")) if round_number(r) < number]
    frames = [frame.select("digest", "embedding") for frame in frames if len(frame)]
    return pl.concat(frames).unique("digest", keep="last", maintain_order=True) if frames else None


# ------------------------------------------------------------------------------------ seeds


def seeds_step(source: str) -> StepOutput:
    """The `seeds` table of `source` (`bundled` or a JSONL/Parquet path; `prismatic.data.samples.load_seeds`
    validates it). Provenance: source. Facts: by_task (rows per task), source."""
    from prismatic.data.samples import load_seeds

    frame = load_seeds(source)
    return StepOutput({"seeds": frame}, provenance={"seeds": {"source": source}},
                      facts={"by_task": dict(frame.group_by("task").len().iter_rows()), "source": source})


def seeds_as_verified(seeds: pl.DataFrame) -> pl.DataFrame:
    """The seed round's verified samples: each seed is its own problem, verified by its reference
    (votes = majority_size = 1)."""
    return seeds.select(
        "id", pl.col("id").alias("problem_id"), "prompt", "response", "answer",
        pl.lit(1).alias("votes"), pl.lit(1).alias("majority_size"), "task")


def pool_rows(verified: pl.DataFrame, origin: str, round_added: str) -> pl.DataFrame:
    """`pool` rows of verified samples: origin 'seed' | 'generated', added in round `round_added`."""
    return verified.select("id", "prompt", "response", "answer", "task",
                           pl.lit(origin).alias("origin"), pl.lit(round_added).alias("round_added"))


# ------------------------------------------------------------------------------------ generations


def generations_step(key: str, config: SynthesisConfig, *, pool: pl.DataFrame | None = None,
                     seeds: pl.DataFrame | None = None, engine: Engine | None = None, journal: Journal | None = None,
                     model: str = "", nll: ProblemNLL | None = None, budget: Budget | None = None,
                     prices: PriceTable | None = None) -> StepOutput:
    """Round `key`'s `generations` and `rejections`.

    r000: nothing is generated; both tables are empty (fact: note).
    rN: `pool` is r(N−1)'s pool; the `level` of `seeds` weighs its rows in the few-shot draw. The
    problem filter (exact and near duplicates of the pool, 10-gram overlap with the benchmark files
    of `config.decontamination`, read here) and `nll` screen the problems before they are solved
    (`prismatic.synthesis.generate.generate_round`); requests go through `engine` as `model`,
    journaled in `journal`; `budget` (`generate_journaled`) stops sending once the round's spending
    reaches it. Provenance of generations: screening (the NLL thresholds per task) and usage
    (`Usage.summary` of every request of the round, journaled earlier or now: tokens, latency, and
    cost_usd under `prices`). Facts: problems_parsed, problems (kept after screening), solutions,
    unparseable_answers, problems_removed and removed_<reason> (every filter and quality reason, zeros
    included), nll_thresholds, prompt_tokens, completion_tokens, total_tokens and cost_usd (the
    round's, from usage; cost null without prices), output_tokens (the engine's during this step),
    responses_from_journal (journaled before), responses_generated, tokens_per_s = output tokens ÷
    wall seconds of the generation (0.0 when none).
    """
    from prismatic.data.filters import filter_counts
    from prismatic.data.quality import build_filter, removal_counts

    if key == SEED_ROUND:
        return StepOutput({"generations": empty("generations"), "rejections": empty("rejections")},
                          facts={"note": "seed round: nothing generated"})
    pool = pool.join(seeds.select("id", "level"), on="id", how="left")
    problem_filter = build_filter(pool.select("id", "prompt"), config.dedup, config.decontamination)
    tokens_before, journaled_before = engine.output_tokens, len(journal)
    started = time.perf_counter()
    frame, problems, rejections, about = generate_round(engine, journal, pool, config, model, key,
                                                        problem_filter=problem_filter, nll=nll, budget=budget)
    seconds = time.perf_counter() - started
    tokens = engine.output_tokens - tokens_before
    removed = {**filter_counts(rejections), **removal_counts(rejections)}
    usage = about.pop("usage").summary(prices)
    return StepOutput({"generations": frame, "rejections": rejections},
                      provenance={"generations": {"screening": about, "usage": usage}}, facts={
        "problems_parsed": frame.filter(kind="problem").height,
        "problems": len(problems),
        "solutions": frame.filter(kind="solution").height,
        "unparseable_answers": rejections.filter(reason="unparseable_problems").height,
        "problems_removed": sum(removed.values()),
        **{f"removed_{reason}": count for reason, count in removed.items()},
        "nll_thresholds": about["nll_thresholds"],
        **{name: usage[name] for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")},
        "output_tokens": tokens,
        "responses_from_journal": journaled_before,
        "responses_generated": len(journal) - journaled_before,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else 0.0,
    })


# ------------------------------------------------------------------------------------ verification


def verify_round(generations: pl.DataFrame, min_agree: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(verified_samples, rejections): per problem, the solutions in the winning answer group.

    Answers: math → `extract_answer` (the last `\\boxed{}`, else "final answer is N") compared with
    math-verify both ways; nli → the label. votes = non-empty answers among the problem's
    solutions; majority_size = the winning group's size. A problem without a winner (fewer than
    `min_agree` agreeing) is a `no_majority` rejection.
    """
    problems = generations.filter(kind="problem")
    solutions = generations.filter(kind="solution").with_columns(problem_id=pl.col("parent_ids").list.first())
    rows, rejections = [], []
    for problem in problems.iter_rows(named=True):
        task = problem["task"]
        group = solutions.filter(problem_id=problem["id"]).sort("id")
        if group.is_empty():  # removed before solving (dedup/decontamination): already a rejection
            continue
        texts = group["text"].to_list()
        answers = [nli_label(t) if task == "nli" else extract_answer(t) for t in texts]
        equal = (lambda a, b: a == b) if task == "nli" else math_equal
        winner, members, size = majority_vote(answers, equal=equal, min_agree=min_agree)
        votes = sum(1 for a in answers if a)
        if winner is None:
            rejections.append({"id": problem["id"], "reason": "no_majority",
                               "detail": json.dumps({"answers": answers})})
            continue
        for i in members:
            rows.append({"id": group["id"][i], "problem_id": problem["id"], "prompt": problem["text"],
                         "response": texts[i], "answer": str(winner), "votes": votes, "majority_size": size,
                         "task": task})
    return (pl.DataFrame(rows, schema=schema("verified_samples")),
            pl.DataFrame(rejections, schema=schema("rejections")))


def verified_samples_step(key: str, min_agree: int, *, seeds: pl.DataFrame | None = None,
                          generations: pl.DataFrame | None = None,
                          rejections: pl.DataFrame | None = None) -> StepOutput:
    """Round `key`'s `verified_samples` (and, after r000, its `rejections`).

    r000: the `seeds`, each verified by its reference (`seeds_as_verified`; fact: source). rN: the
    majority vote over `generations` (`verify_round`); `rejections` becomes the round's earlier
    rejections (the generation step's) without any old `no_majority` row, then this vote's.
    Facts: problems (problem rows generated), problems_verified, problem_pass_rate =
    problems_verified ÷ problems, solution_pass_rate = verified solutions ÷ solutions (4 decimals; 0.0
    when there are none).
    """
    if key == SEED_ROUND:
        return StepOutput({"verified_samples": seeds_as_verified(seeds)}, facts={"source": "seeds"})
    frame, rejected = verify_round(generations, min_agree)
    earlier = rejections.filter(pl.col("reason") != "no_majority")
    problems = generations.filter(kind="problem").height
    solutions = generations.filter(kind="solution").height
    verified_problems = frame["problem_id"].n_unique()
    return StepOutput({"verified_samples": frame, "rejections": pl.concat([earlier, rejected])}, facts={
        "problems": problems,
        "problems_verified": verified_problems,
        "problem_pass_rate": round(verified_problems / problems, 4) if problems else 0.0,
        "solution_pass_rate": round(len(frame) / solutions, 4) if solutions else 0.0,
    })


# ------------------------------------------------------------------------------------ gradient features


Featurize = Callable[[pl.DataFrame, Shard], tuple[FeatureSet, str]]
"""(samples, shard) → (that shard's features, the proxy's name): `prismatic.gradients.proxy.compute_features`
with a loaded proxy (`resources.proxy.ProxyResource.featurize`)."""


def feature_shard_step(samples: pl.DataFrame, shard: Shard, featurize: Featurize) -> FeatureSet:
    """Features of shard `shard` = (index, count) of the round's verified `samples` (its contiguous part
    of the batch plan, `prismatic.gradients.featureset.shard_units`), with the proxy's name in `meta`;
    an empty set (0 × 1) when there are no samples."""
    if samples.is_empty():
        return FeatureSet(ids=[], features=np.zeros((0, 1), dtype=np.float32), n_tokens=[], truncated=[])
    result, proxy_name = featurize(samples, shard)
    result.meta = {**result.meta, "proxy": proxy_name}
    return result


def gradient_features_step(samples: pl.DataFrame, shards: Sequence[FeatureSet]) -> StepOutput:
    """The round's `gradient_features`: every shard merged in the order of `samples` (the verified
    samples), one unit row of width d per sample; empty (width 1, no facts) without samples.
    Provenance: projection (its identity, without per-layer segments), proxy, shards. Facts: dim,
    mode, proxy, shards, seconds (compute seconds summed over shards), samples_per_s, truncated
    (samples cut by max_tokens), projection_seed."""
    result = merge_feature_sets(list(shards), samples["id"].to_list())
    n = len(result.ids)
    if not n:
        return StepOutput({"gradient_features": empty("gradient_features")})
    proxy_name, dim = result.meta["proxy"], result.features.shape[1]
    frame, projection = feature_table(result)
    return StepOutput({"gradient_features": frame}, provenance={"gradient_features": {
        "projection": projection, "proxy": proxy_name, "shards": len(shards)}}, facts={
        "dim": dim, "mode": result.meta["mode"], "proxy": proxy_name,
        "shards": len(shards), "seconds": round(result.seconds, 2),
        "samples_per_s": round(n / result.seconds, 2) if result.seconds else None,
        "truncated": sum(result.truncated), "projection_seed": result.meta["projection"]["seed"],
    })


# ------------------------------------------------------------------------------------ selection and pool


def clustering_from_centroids(centroids: np.ndarray, sizes: np.ndarray) -> Clustering:
    """A Clustering that carries only what selection needs: the centroids and pool cluster sizes."""
    empty_rows = np.zeros(0)
    return Clustering(centroids=centroids.astype(np.float32), labels=empty_rows.astype(np.int64),
                      sizes=sizes.astype(np.int64), similarity=empty_rows.astype(np.float32),
                      mean_similarity=float("nan"))


def selection_step(key: str, config: SynthesisConfig, *, seeds: pl.DataFrame | None = None,
                   candidates: pl.DataFrame | None = None, centroids: pl.DataFrame | None = None,
                   pool_features: np.ndarray | None = None) -> StepOutput:
    """Round `key`'s `selection`: one row per candidate, kept or not.

    r000: every seed is kept (cluster −1, size 0, rule 'seed'). rN: the `gradient_features` of the
    round (`candidates`) against r(N−1)'s `centroids` and pool features (n × d) by
    `config.selection_rule` (`prismatic.synthesis.selection.select`; count = `selection_count`
    except for `paper`); then `selection_outcome`, the pool G-Vendi before and after and the chance
    control (`control_draws` seeded random draws of as many candidates). Provenance: outcome.
    Facts: kept; after r000 also rule, keep_rate = kept ÷ candidates, pool_gvendi_before,
    pool_gvendi_after, gain, control_gain and control (its draws).
    """
    if key == SEED_ROUND:
        frame = pl.DataFrame({"id": seeds["id"], "cluster": -1, "cluster_size_at_decision": 0, "gain": None,
                              "kept": True, "rule": "seed"}, schema=schema("selection"))
        return StepOutput({"selection": frame}, facts={"kept": len(frame)})
    rule = config.selection_rule
    x = np.asarray(candidates["feature"].to_numpy(), dtype=np.float32) if len(candidates) else None
    if x is None:
        frame = empty("selection")
    else:
        clustering = clustering_from_centroids(np.asarray(centroids["centroid"].to_numpy(), dtype=np.float32),
                                               centroids["size"].to_numpy())
        frame = select(rule, candidates["id"].to_list(), x, clustering,
                       count=None if rule == "paper" else config.selection_count,
                       pool_features=pool_features if rule in POOL_FEATURE_RULES else None,
                       epsilon=config.logdet_epsilon)
    outcome = selection_outcome(pool_features, x, frame["kept"].to_numpy(), draws=config.control_draws,
                                seed=config.seed)
    kept = outcome["kept"]
    return StepOutput({"selection": frame}, provenance={"selection": {"outcome": outcome}}, facts={
        "kept": kept, "rule": rule, "keep_rate": round(kept / len(frame), 4) if len(frame) else 0.0,
        "pool_gvendi_before": float(outcome["gvendi_before"]), "pool_gvendi_after": float(outcome["gvendi_after"]),
        "gain": float(outcome["gain"]), "control_gain": float(outcome["control_gain"]), "control": outcome["control"],
    })


def pool_step(key: str, *, seeds: pl.DataFrame | None = None, previous_pool: pl.DataFrame | None = None,
              selection: pl.DataFrame | None = None, verified: pl.DataFrame | None = None) -> StepOutput:
    """The rows round `key` adds to the pool: the `pool` table is stored as deltas, and the pool after
    round `key` is what every round up to `key` added (`prismatic.storage.deltas.read_as_of`).
    r000: the seeds (origin 'seed'). rN: the round's verified samples whose `selection` row is kept
    (origin 'generated'); `previous_pool` is r(N−1)'s pool as of that round (its `id` column is enough),
    and a kept id already in it is a `PrismError` (an id is added once). Facts: added, pool_size (the
    pool after the round: previous pool + added)."""
    if key == SEED_ROUND:
        frame = pool_rows(seeds_as_verified(seeds), "seed", SEED_ROUND)
        return StepOutput({"pool": frame}, facts={"added": len(frame), "pool_size": len(frame)})
    kept_ids = selection.filter("kept")["id"]
    added = pool_rows(verified.filter(pl.col("id").is_in(kept_ids.implode())), "generated", key)
    again = added.filter(pl.col("id").is_in(previous_pool["id"].implode()))["id"]
    if len(again):
        raise PrismError(f"table 'pool': round {key} keeps id(s) already in the pool, e.g. {again.head(3).to_list()}")
    return StepOutput({"pool": added}, facts={"added": len(added), "pool_size": len(previous_pool) + len(added)})


# ------------------------------------------------------------------------------------ clusters and scores


def clusters_step(pool: pl.DataFrame, features: np.ndarray, projection: dict, config: SynthesisConfig
                  ) -> StepOutput:
    """Spherical k-means of the pool's features (rows in `pool` order), k = num_clusters(|pool|,
    cluster_ratio), with the config's iterations, seed and backend. Tables, in write order:
    `centroids` (cluster, unit centroid, size; provenance: projection) and `clusters` (id, cluster,
    cluster_size, distance = 1 − cosine to its centroid; provenance: k). Facts: k, cluster_size_min,
    cluster_size_median, cluster_size_max, mean_cosine_to_centroid (4 decimals)."""
    result = spherical_kmeans(features, num_clusters(len(pool), config.cluster_ratio),
                              iterations=config.kmeans_iterations, seed=config.seed, backend=config.kmeans_backend)
    clusters = pl.DataFrame({"id": pool["id"], "cluster": result.labels, "cluster_size": result.sizes[result.labels],
                             "distance": 1.0 - result.similarity.astype(np.float64)})
    centroids = pl.DataFrame({
        "cluster": np.arange(result.k),
        "centroid": pl.Series("centroid", result.centroids, dtype=pl.Array(pl.Float32, result.dim)),
        "size": result.sizes})
    sizes = np.sort(result.sizes)[::-1]
    return StepOutput({"centroids": centroids, "clusters": clusters},
                      provenance={"centroids": {"projection": projection}, "clusters": {"k": result.k}}, facts={
        "k": result.k, "cluster_size_min": int(sizes[-1]), "cluster_size_median": float(np.median(sizes)),
        "cluster_size_max": int(sizes[0]), "mean_cosine_to_centroid": round(result.mean_similarity, 4),
    })


def diversity_table(results: dict, pool_size: int, candidate_features: np.ndarray, about: dict,
                    selection_outcome: dict | None = None) -> pl.DataFrame:
    """The `diversity_scores` rows of a round: one per metric result of the pool (value, pool size,
    details as JSON), then `gvendi_candidates`, the G-Vendi of the round's candidate features (when
    there are any), whose details are the projection `about`, then `gvendi_control`, the pool
    G-Vendi had the selection kept as many candidates at random (`prismatic.synthesis.control.random_control`,
    from the selection's recorded outcome; not in the seed round)."""
    rows = [{"metric": name, "value": result.value, "n": pool_size, "details": json.dumps(result.details)}
            for name, result in results.items()]
    if len(candidate_features):
        rows.append({"metric": "gvendi_candidates", "value": gvendi(candidate_features), "n": len(candidate_features),
                     "details": json.dumps(about)})
    if selection_outcome is not None:
        control = selection_outcome["control"]
        rows.append({"metric": "gvendi_control", "value": control["gvendi"], "n": pool_size,
                     "details": json.dumps(control)})
    return pl.DataFrame(rows, schema=schema("diversity_scores"))


def diversity_scores_step(config: PrismConfig, pool: pl.DataFrame, features: np.ndarray, projection: dict,
                          candidates: np.ndarray, *, outcome: dict | None = None,
                          previous_gvendi: float | None = None, proxy: Callable[[], tuple] | None = None,
                          judge: Callable[[], tuple] | None = None, embeddings: pl.DataFrame | None = None,
                          log: Callable[[str], None] | None = None) -> StepOutput:
    """The round's `diversity_scores` (`diversity_table`): G-Vendi = exp(entropy of the eigenvalues of
    XᵀX/n) of the pool's unit features X (n × d, `features`), every metric of `config.metrics.names`
    of the `pool` rows (`prismatic.metrics.registry`; `proxy` and `judge` load the proxy and the
    cluster-agent judge on first use), G-Vendi of the round's `candidates` (its gradient features) and,
    after r000, the selection's recorded `outcome` control. Facts: pool_size, each metric's value;
    with the previous round's pool G-Vendi (`previous_gvendi`) also gvendi_gain = G-Vendi −
    previous, and with an outcome gvendi_control_gain = control G-Vendi − previous.

    Embedding Vendi encodes only the pool rows that `embeddings` (`cached_embeddings`: what earlier
    rounds encoded) lacks, and the step writes those as the round's `embeddings` table, so a round
    encodes what it added, not the pool. Facts then include embeddings_encoded (rows encoded).
    """
    from prismatic.metrics.embeddings import embed_with_cache, load_encoder
    from prismatic.metrics.registry import compute_metrics, inputs_from_config, sample_texts

    settings = config.metrics
    encoded: dict[str, pl.DataFrame] = {}

    def pool_embeddings() -> np.ndarray:
        ids = pool["id"].to_list()
        matrix, digests, fresh = embed_with_cache(lambda: load_encoder(settings.embedding_model),
                                                  sample_texts(pool, settings.text), embeddings,
                                                  settings.embedding_batch_size)
        encoded["embeddings"] = pl.DataFrame({
            "id": [ids[i] for i in fresh], "digest": [digests[i] for i in fresh], "embedding": matrix[fresh],
            "encoder": settings.embedding_model, "text": settings.text,
        }).with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, matrix.shape[1])))
        return matrix

    about = {"proxy": projection.get("proxy"), "dim": features.shape[1], "projection": projection}
    inputs = inputs_from_config(pool, config, features=lambda: (features, about), proxy=proxy, judge=judge,
                                embeddings=pool_embeddings)
    results = compute_metrics(["gvendi", *settings.names], inputs, log=log)
    frame = diversity_table(results, len(pool), candidates, about, outcome)
    facts = {"pool_size": len(pool), **{row["metric"]: row["value"] for row in frame.iter_rows(named=True)}}
    if previous_gvendi is not None:
        facts["gvendi_gain"] = results["gvendi"].value - previous_gvendi
        if outcome is not None:
            facts["gvendi_control_gain"] = outcome["control"]["gvendi"] - previous_gvendi
    if "embeddings" in encoded:
        facts["embeddings_encoded"] = len(encoded["embeddings"])
    return StepOutput({"diversity_scores": frame, **encoded}, facts=facts)
