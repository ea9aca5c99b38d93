"""Definitions load: every asset, job, partition definition and resource — the seed asset runs, and a
whole run parses prism.yaml once and gets its store as a parameter."""

import os

import polars as pl
import pytest
from dagster import DagsterInstance, materialize
from fake_llm import ROUND_CONFIG, DeterministicServer

import resources.home
from prism_assets.assets.seeds import seeds
from prism_assets.automation.jobs import REPORT_ASSETS, ROUND_ASSETS
from prism_assets.definitions import build_definitions, defs
from prism_assets.partitions import rounds
from prismatic.storage.factory import open_store
from resources.home import PrismHome
from resources.store import StoreResource

ASSETS = {"seeds", *ROUND_ASSETS, *REPORT_ASSETS}


def test_definitions_load():
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    for name in (*ROUND_ASSETS, *REPORT_ASSETS):
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
    assert parents["round_report"] == {"clusters", "diversity_scores"}


def test_seeds_asset_writes_the_store_and_catalog(tmp_path):
    home = str(tmp_path)
    prism_home = PrismHome(home=home)
    result = materialize([seeds], resources={"prism_home": prism_home, "store": StoreResource(prism_home=prism_home)},
                         instance=DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("seeds")[0].metadata
    stored = open_store(tmp_path / "store").read("seeds", "r000")
    assert metadata["dagster/row_count"].value == stored.height >= 70
    assert set(stored["task"]) == {"math", "nli"} and stored.schema["level"] == pl.Int64
    assert (tmp_path / "catalog.duckdb").exists()


def test_store_resource_location_is_a_parameter(tmp_path, monkeypatch):
    monkeypatch.delenv("PRISM_STORE", raising=False)
    prism_home = PrismHome(home=str(tmp_path))
    assert StoreResource(prism_home=prism_home).store().uri == str(tmp_path / "store")
    assert StoreResource(prism_home=prism_home, uri=str(tmp_path / "there")).store().uri == str(tmp_path / "there")
    defs = build_definitions(str(tmp_path), store=str(tmp_path / "there"))
    assert defs.resources["store"].uri == str(tmp_path / "there")


@pytest.mark.slow
def test_a_round_run_parses_prism_yaml_once_and_writes_the_store_it_is_given(tmp_path, tiny_model_dir, monkeypatch):
    """`run_round` of the seed round and of a generated round (the fake OpenAI server): every resource,
    the definitions and the runner share one parsed prism.yaml (before, a run parsed it 65 and 83
    times); `--store` reaches the steps as a parameter, not through the environment."""
    real_load_config = resources.home.load_config
    calls = []

    def counting_load_config(*args, **kwargs):
        calls.append(args)
        return real_load_config(*args, **kwargs)

    from prism_cli.runner import run_round

    monkeypatch.setattr(resources.home, "load_config", counting_load_config)
    monkeypatch.setattr(resources.home, "_LOADED", {})
    monkeypatch.delenv("PRISM_STORE", raising=False)
    monkeypatch.setenv("PRISM_HOME", os.environ.get("PRISM_HOME", ".prism"))  # run_round sets it
    monkeypatch.setenv("PRISM_TEST_API_KEY", "sk-test")
    server = DeterministicServer()
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "prism.yaml").write_text(ROUND_CONFIG.format(proxy=tiny_model_dir, url=server.url))
        elsewhere = tmp_path / "elsewhere"
        instance = DagsterInstance.ephemeral()
        for key in ("r000", "r001"):
            run_round(home, key, instance, store_uri=str(elsewhere))
    finally:
        server.close()
    assert len(calls) == 1
    assert "PRISM_STORE" not in os.environ and not (home / "store").exists()
    stored = open_store(elsewhere)
    assert stored.rounds("generations") == ["r000", "r001"] and stored.read("generations", "r001").height > 0


def test_home_config_is_parsed_once_per_home_and_again_after_an_edit(tmp_path, monkeypatch):
    calls = []
    real_load_config = resources.home.load_config
    monkeypatch.setattr(resources.home, "load_config", lambda home: calls.append(home) or real_load_config(home))
    (tmp_path / "prism.yaml").write_text("rounds:\n  max_rounds: 2\n")
    first = PrismHome(home=str(tmp_path)).config()
    assert PrismHome(home=str(tmp_path)).config() is first and len(calls) == 1
    (tmp_path / "prism.yaml").write_text("rounds:\n  max_rounds: 3\n")  # same size, maybe the same mtime
    assert PrismHome(home=str(tmp_path)).config().rounds.max_rounds == 3 and len(calls) == 2
