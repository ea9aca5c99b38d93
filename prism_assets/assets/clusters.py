"""Round rN's clusters: spherical k-means of the pool's gradient features, whose centroids round r(N+1)
selects against."""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult

from prism_assets import tables
from prism_assets.assets.pool import pool
from prism_assets.metadata import cluster_size_metadata
from prism_assets.partitions import round_asset
from prismatic.synthesis.steps import clusters_step, pool_features
from resources.home import PrismHome
from resources.store import StoreResource


@round_asset(deps=[pool, AssetKey("gradient_features")], kinds={"polars"}, code_version="2",
             description="Spherical k-means (k = cluster_ratio × pool size; faiss or bf16, synthesis.kmeans_backend) "
                         "of the pool's gradient features; "
                         "writes the per-sample `clusters` table and the `centroids` the next round selects against.")
def clusters(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    members = tables.read(store, "pool", context.partition_key, columns=["id", "round_added"])
    features, projection = pool_features(store.store(), members)
    output = clusters_step(members, features, projection, prism_home.config().synthesis)
    version, metadata = tables.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata={
        **metadata, **cluster_size_metadata(output.tables["centroids"]["size"].to_numpy())})
