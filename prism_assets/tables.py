"""How assets read and write their tables: through the store, with provenance in every file.

Inside a round, edges are declared Dagster dependencies and data flows through the store. The one
undeclared edge, round rN reading r(N-1), goes through `read_previous`, which returns what it read
with the materialization it came from (round, run id, data version) for the asset's metadata.
Both read a table as of a round (`prismatic.storage.deltas.read_as_of`): the pool, stored as what each
round added, comes back whole.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import AssetExecutionContext, DataVersion

from prismatic.rounds import SEED_ROUND, round_number
from prismatic.storage.deltas import read_as_of
from prismatic.synthesis.steps import StepOutput
from resources.store import StoreResource


def _round(context: AssetExecutionContext) -> str:
    # A round asset's run names its round by a partition tag, or (backfills: one run per round) by a
    # one-round range; unpartitioned assets (the seeds) are stored as round r000.
    return context.partition_key if context.assets_def.partitions_def is not None else SEED_ROUND


def write_step(context: AssetExecutionContext, resource: StoreResource, output: StepOutput,
               **read: Any) -> tuple[DataVersion, dict[str, Any]]:
    """Write a round step's tables (`StepOutput.write`); `read` is what the asset read from the previous
    round, recorded in its own table's provenance (None values are left out: the seed round reads
    none). Returns that table's data version and the start of the asset's metadata: its
    `dagster/row_count`, then the step's facts (Dagster shows dicts and lists as JSON)."""
    asset, key, catalog = context.asset_key.to_user_string(), _round(context), resource.catalog()
    output.write(catalog, key, run_id=context.run_id, asset=asset,
                 **{name: value for name, value in read.items() if value is not None})
    version = DataVersion(catalog.store.data_version(asset, key))
    return version, {"dagster/row_count": len(output.tables[asset]), **output.facts}


def read(resource: StoreResource, table: str, round_key: str, columns: list[str] | None = None) -> pl.DataFrame:
    """`table` as of round `round_key` (`read_as_of`: the pool's rows of every round up to it); `columns`: only
    those."""
    return read_as_of(resource.store(), table, round_key, columns)


def read_previous(resource: StoreResource, table: str, round_key: str,
                  columns: list[str] | None = None) -> tuple[pl.DataFrame, dict[str, str]]:
    """Table of an earlier round as of that round (`read`), and which materialization it was (for metadata
    and checks): the round, run id and data version of the partition `round_key` itself (the pool's
    rows of that round; an earlier round's rematerialization is traced by that round's own check)."""
    store = resource.store()
    frame = read_as_of(store, table, round_key, columns)
    written = store.read_metadata(table, round_key)
    used = {"round": round_key, "run_id": str(written.get("run_id", "")),
            "data_version": store.data_version(table, round_key)}
    return frame, used


def history(resource: StoreResource, table: str, round_key: str, current: pl.DataFrame,
            columns: list[str]) -> pl.DataFrame:
    """`columns` of `table` in the stored rounds before `round_key` and of `current` (this round's rows, not
    yet written), with a `round` column, in round order: what a metric-by-round plot draws."""
    earlier = [r for r in resource.store().rounds(table) if round_number(r) < round_number(round_key)]
    frames = [read(resource, table, r).with_columns(round=pl.lit(r)) for r in earlier]
    frames.append(current.with_columns(round=pl.lit(round_key)))
    return pl.concat([frame.select("round", *columns) for frame in frames])
