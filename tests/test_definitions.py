"""Definitions load with every asset and resource, and the seed asset materializes."""

from dagster import materialize

from prism_assets.definitions import defs
from prism_assets.partitions import round_key, rounds
from prism_assets.seeds import seeds
from resources.home import PrismHome


def test_definitions_load(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_HOME", str(tmp_path))
    repo = defs.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == {"seeds"}
    assert rounds.name == "rounds" and round_key(3) == "r003"


def test_seeds_asset_materializes_with_counts(tmp_path):
    result = materialize([seeds], resources={"prism_home": PrismHome(home=str(tmp_path))})
    assert result.success
    metadata = result.asset_materializations_for_node("seeds")[0].metadata
    assert metadata["rows"].value >= 70
    assert "- math: " in metadata["by_task"].value and "- nli: " in metadata["by_task"].value
