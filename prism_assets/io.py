"""How assets read and write their tables: through the store, with provenance in every file.

Inside a round, edges are declared Dagster dependencies and data flows through the store. The one
undeclared edge, round rN reading r(N-1), goes through `read_previous`, which returns what it read
with the materialization it came from (round, run id, data version) for the asset's metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, DataVersion

from prismatic.errors import PrismError
from resources.store import StoreResource


def write(context: AssetExecutionContext, resource: StoreResource, table: str, frame: pl.DataFrame,
          **provenance: Any) -> DataVersion:
    """Write this partition of `table` (atomically) with provenance.

    Views read a file pattern, so new rounds of a table appear in queries by themselves; the catalog
    is rebuilt only when a table gets its first partition (or the catalog file is missing). A rewrite
    of a table's only partition rebuilds it too: a run killed between its first write and the
    rebuild leaves a table without a view, and its rerun writes that partition again.
    """
    store = resource.store()
    # A round asset's run names its round by a partition tag, or (backfills: one run per round) by a
    # one-round range; unpartitioned assets (the seeds) are stored as round r000.
    key = context.partition_key if context.assets_def.partitions_def is not None else "r000"
    first_partition = store.rounds(table) in ([], [key])
    store.write(table, key, frame, metadata={"round": key, "run_id": context.run_id,
                                             "asset": context.asset_key.to_user_string(), **provenance})
    catalog = resource.catalog()
    if first_partition or not catalog.db_path.exists():
        catalog.refresh()
    return DataVersion(store.data_version(table, key))


def read(resource: StoreResource, table: str, round_key: str) -> pl.DataFrame:
    return resource.store().read(table, round_key)


def read_previous(resource: StoreResource, table: str, round_key: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """Table of an earlier round, and which materialization it was (for metadata and checks)."""
    store = resource.store()
    frame = store.read(table, round_key)
    written = store.read_metadata(table, round_key)
    used = {"round": round_key, "run_id": str(written.get("run_id", "")),
            "data_version": store.data_version(table, round_key)}
    return frame, used


def pool_features(resource: StoreResource, pool: pl.DataFrame) -> tuple[np.ndarray, dict]:
    """Features of every pool row (in pool order), gathered from the rounds that added them.

    Features made with different projections (proxy, mode, dim, seed) are refused, never mixed.
    """
    store = resource.store()
    parts, projection, first_round = [], None, None
    for round_added in sorted(pool["round_added"].unique().to_list()):
        stored = store.read("gradient_features", round_added)
        meta = store.read_metadata("gradient_features", round_added)
        identity = {"proxy": meta.get("proxy"), **(meta.get("projection") or {})}
        if projection is None:
            projection, first_round = identity, round_added
        elif identity != projection:
            raise PrismError(f"gradient_features of {round_added} were made with a different projection than "
                             f"{first_round} ({identity} vs {projection}); rematerialize them with one config")
        parts.append(stored.select("id", "feature"))
    table = pool.select("id").join(pl.concat(parts), on="id", how="left")
    if table["feature"].null_count():
        missing = table.filter(pl.col("feature").is_null())["id"].head(3).to_list()
        raise PrismError(f"pool rows without gradient features, e.g. {missing}")
    return np.asarray(table["feature"].to_numpy(), dtype=np.float32), projection or {}
