"""Definitions load: every asset, job, partition definition and resource — and the seed asset runs."""

import polars as pl
from dagster import DagsterInstance, materialize

from prism_assets.definitions import build_definitions, defs
from prism_assets.jobs import ROUND_ASSETS
from prism_assets.partitions import rounds
from prism_assets.seeds import seeds
from prismatic.storage.store import Store
from resources.home import PrismHome
from resources.store import StoreResource

ASSETS = {"seeds", "generations", "verified_samples", "gradient_features", "selection", "pool", "clusters",
          "diversity_scores"}


def test_definitions_load():
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    assert set(ROUND_ASSETS) == ASSETS - {"seeds"}
    for name in ROUND_ASSETS:
        node = graph.get(next(k for k in graph.get_all_asset_keys() if k.to_user_string() == name))
        assert node.partitions_def == rounds and node.code_version
    assert {job.name for job in repo.get_all_jobs()} >= {"prism_round", "seed_job"}
    assert defs.resolve_job_def("prism_round").partitions_def == rounds
    assert set(defs.resources) == {"prism_home", "store", "generator", "proxy"}


def test_lineage_inside_a_round_is_declared():
    graph = build_definitions("/nonexistent").resolve_asset_graph()
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
               for key in graph.get_all_asset_keys()}
    assert parents["verified_samples"] == {"generations"}
    assert parents["gradient_features"] == {"verified_samples"}
    assert parents["pool"] == {"selection", "verified_samples"}
    assert parents["diversity_scores"] == {"pool", "clusters"}


def test_seeds_asset_writes_the_store_and_catalog(tmp_path):
    home = str(tmp_path)
    result = materialize([seeds], resources={"prism_home": PrismHome(home=home), "store": StoreResource(home=home)},
                         instance=DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("seeds")[0].metadata
    stored = Store(tmp_path / "store").read("seeds", "r000")
    assert metadata["dagster/row_count"].value == stored.height >= 70
    assert set(stored["task"]) == {"math", "nli"} and stored.schema["level"] == pl.Int64
    assert (tmp_path / "catalog.duckdb").exists()
