"""Round rN's pool: the pool of r(N-1) plus the candidates rN kept, stored as what rN added."""

from dagster import AssetExecutionContext, MaterializeResult

from prism_assets import tables
from prism_assets.assets.selection import selection
from prism_assets.assets.verification import verified_samples
from prism_assets.automation.guard import require_previous_round
from prism_assets.metadata import previous_round_links
from prism_assets.partitions import round_asset
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.synthesis.steps import pool_step
from resources.store import StoreResource


@round_asset(deps=[selection, verified_samples], kinds={"polars"}, code_version="2",
             description="The candidates this round keeps, added to the pool: the table is stored as deltas (each "
                         "round's partition holds what it added) and read as of a round (the view `pool`, "
                         "`prismatic.storage.deltas.read_as_of`): the previous round's pool plus the kept candidates.")
def pool(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    key = context.partition_key
    require_previous_round(context, store)
    if key == SEED_ROUND:
        output, used = pool_step(key, seeds=tables.read(store, "seeds", SEED_ROUND)), None
    else:
        previous, used = tables.read_previous(store, "pool", previous_round(key), columns=["id"])
        output = pool_step(key, previous_pool=previous, selection=tables.read(store, "selection", key),
                           verified=tables.read(store, "verified_samples", key))
    version, metadata = tables.write_step(context, store, output, previous_pool=used)
    return MaterializeResult(data_version=version, metadata={**metadata, **previous_round_links("pool", used)})
