"""The seed set: validated once; it is round r000's pool."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from prism_assets import io
from prismatic.data.samples import load_seeds
from resources.home import PrismHome
from resources.store import StoreResource


@asset(kinds={"polars", "duckdb"}, code_version="1", group_name="prismatic", owners=["team:prismatic"],
       description="Seed problems with reference solutions (default: the bundled math + NLI set). "
                   "Stored as round r000 of the `seeds` table.")
def seeds(context: AssetExecutionContext, prism_home: PrismHome, store: StoreResource) -> MaterializeResult:
    source = prism_home.config().synthesis.seeds
    frame = load_seeds(source)
    version = io.write(context, store, "seeds", frame, source=source)
    by_task = dict(frame.group_by("task").len().iter_rows())
    return MaterializeResult(data_version=version, metadata={
        "dagster/row_count": len(frame),
        "by_task": MetadataValue.json(by_task),
        "source": source,
    })
