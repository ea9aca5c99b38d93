"""Round rN's selection: which verified candidates join the pool, decided in gradient space against the pool
of r(N-1)."""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult

from prism_assets import tables
from prism_assets.automation.guard import require_previous_round
from prism_assets.metadata import previous_round_links
from prism_assets.partitions import round_asset
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.steps import pool_features, selection_step
from resources.home import PrismHome
from resources.store import StoreResource


@round_asset(deps=[AssetKey("gradient_features")], kinds={"polars"}, code_version="2",
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
        output, used = selection_step(key, synthesis, seeds=tables.read(store, "seeds", SEED_ROUND)), None
    else:
        centroids, used = tables.read_previous(store, "centroids", previous_round(key))
        candidates = tables.read(store, "gradient_features", key)
        previous_pool, _ = tables.read_previous(store, "pool", previous_round(key), columns=["id", "round_added"])
        pool_x, _ = pool_features(store.store(), previous_pool)
        output = selection_step(key, synthesis, candidates=candidates, centroids=centroids, pool_features=pool_x)
    version, metadata = tables.write_step(context, store, output, previous_centroids=used)
    return MaterializeResult(data_version=version, metadata={**metadata, **previous_round_links("centroids", used)})
