"""The seed set: validated once; it is round r000's pool."""

from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from prism_assets import io
from prismatic.data import bundled_seeds_path, load_samples
from prismatic.errors import InputError
from resources.home import PrismHome
from resources.store import StoreResource


def load_seeds(source: str) -> pl.DataFrame:
    """Seeds from `bundled` or a JSONL/Parquet path; `answer` and `task` are required, `level` ≥ 1."""
    path = bundled_seeds_path() if source == "bundled" else Path(source)
    frame = load_samples(path)
    for column in ("answer", "task"):
        if column not in frame.columns:
            raise InputError(path, "missing in every row (or of mixed types)", field=column)
    if "level" not in frame.columns:
        frame = frame.with_columns(level=pl.lit(1))
    if "source" not in frame.columns:
        frame = frame.with_columns(source=pl.lit(path.name))
    return frame.select("id", "prompt", "response", pl.col("answer").cast(pl.String), "task", "source",
                        pl.col("level").cast(pl.Int64))


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
