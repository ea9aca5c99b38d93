"""Selection, pool and clusters: keep candidates in sparse gradient-space clusters, grow the pool,
re-cluster it for the next round."""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, asset

from prism_assets import io
from prism_assets.guard import require_previous_round
from prism_assets.metadata import cluster_size_metadata, previous_round_links
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL, rounds
from prism_assets.verification import verified_samples
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.steps import clusters_step, pool_features, pool_step, selection_step
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
    synthesis = prism_home.config().synthesis
    if key == SEED_ROUND:
        output, used = selection_step(key, synthesis, seeds=io.read(store, "seeds", SEED_ROUND)), None
    else:
        centroids, used = io.read_previous(store, "centroids", previous_round(key))
        candidates = io.read(store, "gradient_features", key)
        previous_pool, _ = io.read_previous(store, "pool", previous_round(key), columns=["id", "round_added"])
        pool_x, _ = pool_features(store.store(), previous_pool)
        output = selection_step(key, synthesis, candidates=candidates, centroids=centroids, pool_features=pool_x)
    version, metadata = io.write_step(context, store, output, previous_centroids=used)
    return MaterializeResult(data_version=version, metadata={**metadata, **previous_round_links("centroids", used)})


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[selection, verified_samples], kinds={"polars"}, code_version="2",
       group_name="prismatic", owners=["team:prismatic"],
       description="The candidates this round keeps, added to the pool: the table is stored as deltas (each "
                   "round's partition holds what it added) and read as of a round (the view `pool`, "
                   "`prismatic.storage.deltas.read_as_of`): the previous round's pool plus the kept candidates.")
def pool(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    if key == SEED_ROUND:
        output, used = pool_step(key, seeds=io.read(store, "seeds", SEED_ROUND)), None
    else:
        previous, used = io.read_previous(store, "pool", previous_round(key), columns=["id"])
        output = pool_step(key, previous_pool=previous, selection=io.read(store, "selection", key),
                           verified=io.read(store, "verified_samples", key))
    version, metadata = io.write_step(context, store, output, previous_pool=used)
    return MaterializeResult(data_version=version, metadata={**metadata, **previous_round_links("pool", used)})


@asset(partitions_def=rounds, pool=ROUND_POOL, backfill_policy=ONE_ROUND_PER_RUN,
       deps=[pool, AssetKey("gradient_features")], kinds={"polars"}, code_version="2",
       group_name="prismatic", owners=["team:prismatic"],
       description="Spherical k-means (k = cluster_ratio × pool size; faiss or bf16, synthesis.kmeans_backend) "
                   "of the pool's gradient features; "
                   "writes the per-sample `clusters` table and the `centroids` the next round selects against.")
def clusters(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    members = io.read(store, "pool", context.partition_key, columns=["id", "round_added"])
    features, projection = pool_features(store.store(), members)
    output = clusters_step(members, features, projection, prism_home.config().synthesis)
    version, metadata = io.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata={
        **metadata, **cluster_size_metadata(output.tables["centroids"]["size"].to_numpy())})
