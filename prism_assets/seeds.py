"""The seed set: validated once, counted per task; later rounds grow the pool from it."""

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from prismatic.data import bundled_seeds_path, load_samples
from resources.home import PrismHome


@asset(kinds={"polars"}, code_version="1", group_name="seed_round",
       description="Seed problems with reference solutions (bundled set: math with \\boxed{} answers, NLI).")
def seeds(context: AssetExecutionContext, prism_home: PrismHome) -> MaterializeResult:
    frame = load_samples(bundled_seeds_path(), prism_home.config().data)
    by_task = frame.group_by("task").agg(pl.len().alias("rows")).sort("task")
    context.log.info(f"{len(frame)} seeds from {bundled_seeds_path()}")
    return MaterializeResult(metadata={
        "rows": len(frame),
        "by_task": MetadataValue.md("\n".join(f"- {task}: {rows}" for task, rows in by_task.iter_rows())),
        "source": str(bundled_seeds_path()),
    })
