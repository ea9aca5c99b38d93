"""Selection, pool and clusters: keep candidates in sparse gradient-space clusters, grow the pool,
re-cluster it for the next round."""

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from prism_assets import io
from prism_assets.guard import require_previous_round
from prism_assets.metadata import cluster_size_metadata, previous_round_links
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.verification import verified_samples
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.selection import POOL_FEATURE_RULES, select, selection_outcome
from prismatic.synthesis.selection import SCHEMA as SELECTION_SCHEMA
from prismatic.synthesis.steps import (
    cluster_pool,
    clustering_from_centroids,
    pool_features,
    pool_rows,
    seeds_as_verified,
)
from resources.home import PrismHome
from resources.store import StoreResource


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[AssetKey("gradient_features")], kinds={"polars"}, code_version="2", group_name="prismatic",
       owners=["team:prismatic"],
       description="Which candidates join the pool. `novelty` (default): greedy max log-det against the pool's "
                   "gradient features, keeping a candidate while its gain log(1 + xᵀA⁻¹x) is at least the pool's "
                   "median leave-one-out gain; `logdet` the same order with a count; `paper`: nearest pool "
                   "centroid's cluster smaller than the median. Every decision is a row. Also records the chance "
                   "control: the pool G-Vendi had as many candidates been kept at random. Round r000: all seeds.")
def selection(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    if key == SEED_ROUND:
        ids = io.read(store, "seeds", SEED_ROUND)["id"]
        frame = pl.DataFrame({"id": ids, "cluster": -1, "cluster_size_at_decision": 0, "gain": None, "kept": True,
                              "rule": "seed"}, schema=SELECTION_SCHEMA)
        version = io.write(context, store, "selection", frame)
        return MaterializeResult(data_version=version, metadata={"dagster/row_count": len(frame), "kept": len(frame)})
    synthesis = prism_home.config().synthesis
    rule = synthesis.selection_rule
    centroids, used = io.read_previous(store, "centroids", previous_round(key))
    features = io.read(store, "gradient_features", key)
    previous_pool, _ = io.read_previous(store, "pool", previous_round(key))
    pool_x, _ = pool_features(store.store(), previous_pool)
    candidates = np.asarray(features["feature"].to_numpy(), dtype=np.float32) if len(features) else None
    if candidates is None:
        frame = pl.DataFrame(schema=SELECTION_SCHEMA)
    else:
        clustering = clustering_from_centroids(np.asarray(centroids["centroid"].to_numpy(), dtype=np.float32),
                                               centroids["size"].to_numpy())
        frame = select(rule, features["id"].to_list(), candidates, clustering,
                       count=None if rule == "paper" else synthesis.selection_count,
                       pool_features=pool_x if rule in POOL_FEATURE_RULES else None,
                       epsilon=synthesis.logdet_epsilon)
    outcome = selection_outcome(pool_x, candidates, frame["kept"].to_numpy(), draws=synthesis.control_draws,
                                seed=synthesis.seed)
    version = io.write(context, store, "selection", frame, previous_centroids=used, outcome=outcome)
    kept = outcome["kept"]
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame), "kept": kept, "rule": rule,
        "keep_rate": round(kept / len(frame), 4) if len(frame) else 0.0,
        "pool_gvendi_before": MetadataValue.float(outcome["gvendi_before"]),
        "pool_gvendi_after": MetadataValue.float(outcome["gvendi_after"]),
        "gain": MetadataValue.float(outcome["gain"]),
        "control_gain": MetadataValue.float(outcome["control_gain"]),
        "control": MetadataValue.json(outcome["control"]),
        "previous_centroids": MetadataValue.json(used),
        **previous_round_links("centroids", used),
    })


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[selection, verified_samples], kinds={"polars"}, code_version="1",
       group_name="prismatic", owners=["team:prismatic"],
       description="The pool after this round: the previous round's pool plus the kept candidates.")
def pool(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    if key == SEED_ROUND:
        frame = pool_rows(seeds_as_verified(io.read(store, "seeds", SEED_ROUND)), "seed", SEED_ROUND)
        version = io.write(context, store, "pool", frame)
        return MaterializeResult(data_version=version, metadata={"dagster/row_count": len(frame), "added": len(frame)})
    previous, used = io.read_previous(store, "pool", previous_round(key))
    kept_ids = io.read(store, "selection", key).filter("kept")["id"]
    added = pool_rows(io.read(store, "verified_samples", key).filter(pl.col("id").is_in(kept_ids.implode())),
                      "generated", key)
    frame = pl.concat([previous, added])
    version = io.write(context, store, "pool", frame, previous_pool=used)
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame), "added": len(added), "previous_pool": MetadataValue.json(used),
        **previous_round_links("pool", used)})


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[pool, AssetKey("gradient_features")], kinds={"polars"}, code_version="2",
       group_name="prismatic", owners=["team:prismatic"],
       description="Spherical k-means (k = cluster_ratio × pool size; faiss or bf16, synthesis.kmeans_backend) "
                   "of the pool's gradient features; "
                   "writes the per-sample `clusters` table and the `centroids` the next round selects against.")
def clusters(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    synthesis = prism_home.config().synthesis
    members = io.read(store, "pool", key)
    features, projection = pool_features(store.store(), members)
    result, frame, centroids = cluster_pool(members["id"], features, synthesis)
    io.write(context, store, "centroids", centroids, projection=projection)
    version = io.write(context, store, "clusters", frame, k=result.k)
    sizes = np.sort(result.sizes)[::-1]
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame), "k": result.k,
        "cluster_size_min": int(sizes[-1]), "cluster_size_median": float(np.median(sizes)),
        "cluster_size_max": int(sizes[0]), "mean_cosine_to_centroid": round(result.mean_similarity, 4),
        **cluster_size_metadata(result.sizes),
    })
