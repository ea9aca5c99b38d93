"""The seed set: validated once; it is round r000's pool."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from prism_assets import tables
from prismatic.synthesis.steps import seeds_step
from resources.home import PrismHome
from resources.store import StoreResource


@asset(kinds={"polars", "duckdb"}, code_version="1", group_name="prismatic", owners=["team:prismatic"],
       description="Seed problems with reference solutions (default: the bundled math + NLI set). "
                   "Stored as round r000 of the `seeds` table.")
def seeds(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    output = seeds_step(prism_home.config().synthesis.seeds)
    version, metadata = tables.write_step(context, store, output)
    return MaterializeResult(data_version=version, metadata=metadata)
