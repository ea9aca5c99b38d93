"""The real services: `dagster-webserver` and `dagster-daemon` on 127.0.0.1 with a temporary
DAGSTER_HOME, a 2-round backfill launched through GraphQL (tiny random proxy; generation against the
deterministic OpenAI-compatible server of tests/fake_llm.py: the engine is not what is tested here), the round
checks on a good and on a crafted bad round, staleness after a rematerialization, and the UI in
headless Chromium (screenshots under tests/artifacts/ui/).

The services are started once for the module; every test reads what they produced.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, DagsterInstance, materialize
from fake_llm import ROUND_CONFIG, DeterministicServer
from services import BACKFILL, RUNS, Services, tag

from prism_assets.assets.checks import ROUND_CHECKS
from prism_assets.assets.pool import pool
from prism_assets.assets.seeds import seeds
from prism_assets.automation.instance import ensure_instance_settings
from prism_assets.automation.jobs import REPORT_ASSETS, ROUND_ASSETS
from prism_assets.definitions import build_definitions
from prismatic.storage.catalog import Catalog
from prismatic.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs"))
from screenshots import CHROMIUM, expand_groups  # noqa: E402  (docs/screenshots.py: the docs' UI pictures)

ARTIFACTS = REPO / "tests" / "artifacts"
ROUNDS = ["r000", "r001"]
API_KEY = "sk-services-test-0b7e21"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture(scope="module")
def llm():
    started = DeterministicServer()
    yield started
    started.close()


def config(llm: DeterministicServer) -> str:
    """prism.yaml of the module: the home's tiny proxy, generation against `llm`, one round at most."""
    return ROUND_CONFIG.format(proxy="tiny", url=llm.url) + "rounds:\n  max_rounds: 1\n"


@pytest.fixture(scope="module")
def services(tmp_path_factory, llm):
    """Seeds materialized, then the webserver; rounds r000 and r001 added and backfilled through GraphQL,
    then the daemon, which runs the backfill. Yields once the backfill is done."""
    from prismatic.models import init_model

    home = tmp_path_factory.mktemp("services")
    init_model("tiny", home / "models" / "tiny")
    (home / "prism.yaml").write_text(config(llm))
    ensure_instance_settings(home / "dagster")
    logs = ARTIFACTS / "services"
    logs.mkdir(parents=True, exist_ok=True)
    running = Services(home, logs, env={"PRISM_TEST_API_KEY": API_KEY})
    with DagsterInstance.from_config(str(running.dagster_home)) as instance:
        assert materialize([seeds], instance=instance, resources=build_definitions(str(home)).resources).success
    try:
        running.start("dagster-webserver", "-h", "127.0.0.1", "-p", str(running.port))
        running.backfill_id = running.launch_backfill(ROUNDS, list(ROUND_ASSETS), "rounds r000-r001")
        # The backfill daemon looks at backfills every 30 s; started now, its first look finds this one.
        running.start("dagster-daemon", "run")
        deadline = time.monotonic() + 900
        while True:
            status = running.graphql(BACKFILL, id=running.backfill_id)["partitionBackfillOrError"]["status"]
            failed = [run for run in running.backfill_runs(running.backfill_id) if run["status"] == "FAILURE"]
            assert not failed, f"run {failed[0]['runId']} failed; daemon log:\n{running.tail('dagster-daemon')}"
            if status not in ("REQUESTED", "CANCELING"):
                break
            assert time.monotonic() < deadline, f"backfill still {status}\n{running.tail('dagster-daemon')}"
            assert all(p.poll() is None for p in running.processes.values()), running.tail("dagster-daemon")
            time.sleep(3)
        running.backfill_status = status
        yield running
    finally:
        running.stop()


def test_backfill_runs_round_by_round_and_fills_the_catalog(services):
    assert services.backfill_status == "COMPLETED_SUCCESS"
    runs = sorted(services.backfill_runs(services.backfill_id), key=lambda run: run["startTime"])
    # One run per round (BackfillPolicy.multi_run(1)), in round order, never two at once (pool prism_rounds).
    assert [tag(run, "dagster/asset_partition_range_start") for run in runs] == ROUNDS
    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"]
    assert runs[0]["endTime"] <= runs[1]["startTime"]

    store = open_store(services.home / "store")
    catalog = Catalog(services.home / "catalog.duckdb", services.home / "store")
    _, verified = catalog.query("select round, count(*) from verified_samples group by 1 order by 1")
    assert [row[0] for row in verified] == ROUNDS and all(n > 0 for _, n in verified)
    _, pools = catalog.query("select round, count(*) from pool group by 1 order by 1")
    kept = store.read("selection", "r001").filter("kept").height
    assert dict(pools) == {"r000": 84, "r001": 84 + kept}
    _, scores = catalog.query("select round, value from diversity_scores where metric = 'gvendi' order by 1")
    assert [row[0] for row in scores] == ROUNDS and all(value > 1.0 for _, value in scores)
    # r001 was built on the pool that r000's run wrote.
    used = store.read_metadata("generations", "r001")["previous_pool"]
    assert used["round"] == "r000" and used["run_id"] == runs[0]["runId"]


def check_results(instance: DagsterInstance, key: str) -> dict[str, tuple[bool, AssetCheckSeverity, str]]:
    """`asset.check` → (passed, severity, run id) of the latest evaluation of every round check about round `key`
    (each result names its round in its metadata)."""
    results = {}
    for check in ROUND_CHECKS:
        check_key = check.check_key
        for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=50):
            evaluation = record.event.dagster_event.event_specific_data if record.event else None
            if isinstance(evaluation, AssetCheckEvaluation) and evaluation.metadata["round"].value == key:
                results[f"{check_key.asset_key.to_user_string()}.{check_key.name}"] = (
                    evaluation.passed, evaluation.severity, record.run_id)
                break
    return results


def test_every_round_check_ran_in_the_backfill_and_passed(services):
    with DagsterInstance.from_config(str(services.dagster_home)) as instance:
        for key in ROUNDS:
            results = check_results(instance, key)
            assert len(results) == len(ROUND_CHECKS), (key, sorted(results))
            failed = {name for name, (passed, severity, _) in results.items()
                      if not passed and severity == AssetCheckSeverity.ERROR}
            assert not failed, (key, failed)


def run_round_checks(home: Path, key: str) -> dict[str, bool]:
    """Run the `round_checks` job for one round on an ephemeral instance: `asset.check` → passed."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ROUNDS)
    result = build_definitions(str(home)).resolve_job_def("round_checks").execute_in_process(
        instance=instance, tags={"dagster/partition": key}, raise_on_error=False)
    return {f"{e.asset_key.to_user_string()}.{e.check_name}": e.passed for e in result.get_asset_check_evaluations()}


def test_checks_pass_on_the_good_round_and_fail_on_a_crafted_bad_one(services, llm, tmp_path):
    (tmp_path / "prism.yaml").write_text(config(llm))
    shutil.copytree(services.home / "store", tmp_path / "store")
    good = run_round_checks(tmp_path, "r001")
    assert len(good) == len(ROUND_CHECKS) and all(
        passed for name, passed in good.items() if name != "diversity_scores.gvendi_non_decreasing"), good

    store = open_store(tmp_path / "store")

    def rewrite(table: str, key: str, frame: pl.DataFrame, **metadata_changes) -> None:
        """Replace a file as a faulty writer would (no validation), keeping its provenance unless changed."""
        metadata = {**store.read_metadata(table, key), **metadata_changes}
        arrow = frame.to_arrow().replace_schema_metadata({b"prismatic.provenance": json.dumps(metadata).encode()})
        pq.write_table(arrow, store.path(table, key))

    gens = store.read("generations", "r001")
    rewrite("generations", "r001", pl.concat([gens, gens.head(1)]))  # a repeated id
    rewrite("verified_samples", "r001", store.read("verified_samples", "r001").head(0))  # pass rate 0
    meta = store.read_metadata("gradient_features", "r001")
    rewrite("gradient_features", "r001", store.read("gradient_features", "r001"),
            projection={**meta["projection"], "seed": meta["projection"]["seed"] + 1})
    rewrite("selection", "r001", store.read("selection", "r001").with_columns(note=pl.lit("extra")))
    centroids = store.read("centroids", "r001")
    rewrite("centroids", "r001", pl.concat([centroids, centroids.tail(1).with_columns(
        cluster=pl.lit(len(centroids), dtype=pl.Int64), size=pl.lit(0, dtype=pl.Int64))]))
    scores = store.read("diversity_scores", "r001")
    rewrite("diversity_scores", "r001", scores.with_columns(value=pl.when(pl.col("metric") == "gvendi")
                                                            .then(pl.lit(1.0)).otherwise("value")))
    store.write("pool", "r000", store.read("pool", "r000"), metadata={"round": "r000", "run_id": "a-later-run"})

    bad = run_round_checks(tmp_path, "r001")
    failing = {name for name, passed in bad.items() if not passed}
    assert failing == {
        "generations.unique_ids", "verified_samples.verified_pass_rate", "gradient_features.projection_consistent",
        "selection.schema", "clusters.no_empty_clusters", "diversity_scores.gvendi_non_decreasing",
        "generations.built_on_latest_previous_round", "pool.built_on_latest_previous_round",
    }, failing


def test_rematerializing_one_step_makes_its_downstream_stale_and_fails_the_next_rounds_provenance(services):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    defs = build_definitions(str(services.home))
    with DagsterInstance.from_config(str(services.dagster_home)) as instance:
        rematerialized = materialize([pool], partition_key="r000", instance=instance, resources=defs.resources,
                                     selection=[AssetKey("pool")])
        assert rematerialized.success
        resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
        assert resolver.get_status(AssetKey("clusters"), "r000") == StaleStatus.STALE
        # provenance_sensor (every 30 s) sees the new pool r000 and re-runs r001's provenance checks.
        deadline = time.monotonic() + 240
        while True:
            passed, _, run_id = check_results(instance, "r001")["generations.built_on_latest_previous_round"]
            if run_id not in {run["runId"] for run in services.backfill_runs(services.backfill_id)}:
                break
            assert time.monotonic() < deadline, services.tail("dagster-daemon")
            time.sleep(3)
    assert not passed
    runs = services.graphql(RUNS, tags=[{"key": "prism/trigger", "value": "provenance_sensor"}])["runsOrError"]
    assert [(run["runId"], tag(run, "dagster/partition")) for run in runs["results"]] == [(run_id, "r001")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (Debian package chromium)"
    profile = ARTIFACTS / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def open_page(browser, url: str, expect: str, screenshot: str, action=None):
    """Open `url`, wait for the text `expect` and for the page to settle, run `action(page)`, save a screenshot."""
    page = browser.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=90_000)
    page.get_by_text(expect, exact=False).first.wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle", timeout=60_000)
    if action:
        action(page)
    out = ARTIFACTS / "ui"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / screenshot), full_page=True)
    return page


def test_ui_shows_the_round_assets_and_their_partitions(services, browser):
    services.graphql("mutation { setNuxSeen }")  # what "Skip" on the first-visit community dialog does
    # The global lineage folds each asset group (prismatic, report) when there are several: unfold them as a user would.
    graph = open_page(browser, f"{services.url}/asset-groups", "Global asset lineage", "asset_graph.png",
                      action=expand_groups)
    nodes = " ".join(graph.locator("svg foreignObject").all_text_contents())  # the graph's nodes, not the list
    for name in ["seeds", *ROUND_ASSETS, *REPORT_ASSETS]:
        assert name in nodes, name

    clusters = open_page(browser, f"{services.url}/assets/clusters?view=partitions&partition=r001", "cluster_sizes",
                         "clusters_r001.png")
    for key in ROUNDS:
        assert clusters.get_by_text(key, exact=True).first.is_visible(), key
    assert "cluster_size_histogram" in clusters.inner_text("body")

    pool_page = open_page(browser, f"{services.url}/assets/pool?view=partitions", "r001", "pool_partitions.png")
    assert all(pool_page.get_by_text(key, exact=True).first.is_visible() for key in ROUNDS)

    checks = open_page(browser, f"{services.url}/assets/generations?view=checks", "built_on_latest_previous_round",
                       "generations_checks.png")
    text = checks.inner_text("body")
    assert "schema" in text and "unique_ids" in text
