"""The `pool` asset writes what its round adds; rounds run one per run (as a backfill does) and an old round
rematerialized read the pool as of the round before, and its checks see the pool as of their round."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from dagster import AssetKey, DagsterInstance, materialize

from prism_assets.assets.checks import ROUND_CHECKS
from prism_assets.assets.pool import pool
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store
from prismatic.storage.schema import ROUND_TABLES, schema
from resources.home import PrismHome
from resources.store import StoreResource

FIXTURE = Path(__file__).parents[1] / "storage" / "fixtures" / "pool_full_copies"
"""A store written before the pool was stored as deltas (tests/storage/fixtures/README.md)."""
ROUNDS = ("r000", "r001", "r002")


def test_pool_rounds_one_per_run_store_deltas_that_read_as_the_full_pool(tmp_path):
    before = open_store(FIXTURE)
    shutil.copytree(FIXTURE, tmp_path / "store", ignore=shutil.ignore_patterns("pool"))
    store = open_store(tmp_path / "store")
    for key in ROUNDS:  # every other table of each round exists (empty), as after a finished round
        for table in ROUND_TABLES:
            if table != "pool" and not store.exists(table, key):
                store.write(table, key, pl.DataFrame(schema=schema(table, dim=4)))
    checks = [check for check in ROUND_CHECKS if any(key.asset_key == AssetKey("pool") for key in check.check_keys)]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", list(ROUNDS))
    home = PrismHome(home=str(tmp_path))
    resources = {"prism_home": home, "store": StoreResource(prism_home=home)}

    def run(key: str):
        result = materialize([pool, *checks], partition_key=key, instance=instance, resources=resources)
        assert result.success
        return result

    results = {key: run(key) for key in ROUNDS}
    for key in ROUNDS:
        assert store.read("pool", key).equals(before.read("pool", key).filter(round_added=key))
        assert read_as_of(store, "pool", key).equals(before.read("pool", key))
        metadata = results[key].asset_materializations_for_node("pool")[0].metadata
        assert metadata["dagster/row_count"].value == store.read("pool", key).height
        assert metadata["pool_size"].value == before.read("pool", key).height
        evaluations = {e.check_name: e for e in results[key].get_asset_check_evaluations()}
        assert evaluations["unique_ids"].passed and evaluations["unique_ids"].metadata["rows"].value == metadata[
            "pool_size"].value
    used = store.read_metadata("pool", "r002")["previous_pool"]
    assert used == {"round": "r001", "run_id": results["r001"].run_id,
                    "data_version": store.data_version("pool", "r001")}

    # r001 again: it reads r000's pool only, so it adds the same rows; r002 now reads a stale r001.
    again = run("r001")
    assert again.asset_materializations_for_node("pool")[0].metadata["pool_size"].value == 91
    assert read_as_of(store, "pool", "r002").equals(before.read("pool", "r002"))
    # What the check built_on_latest_previous_round compares: r002 recorded r001's earlier file.
    assert store.read_metadata("pool", "r002")["previous_pool"] == used != {
        "round": "r001", "run_id": again.run_id, "data_version": store.data_version("pool", "r001")}
