"""Operating rounds without a daemon: the next-round sensor, the round schedule, the previous-round
guard and the instance settings that make backfills run round by round (ephemeral instances)."""

from contextlib import ExitStack
from datetime import UTC, datetime

import polars as pl
import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from prism_assets.assets.generations import generations
from prism_assets.automation.instance import ensure_instance_settings
from prism_assets.automation.jobs import ROUND_ASSETS
from prism_assets.automation.sensors import next_round_sensor
from prism_assets.definitions import build_definitions
from prism_assets.partitions import ONE_ROUND_PER_RUN, ROUND_POOL
from prismatic.storage.factory import open_store
from resources.home import PrismHome
from resources.store import StoreResource


@pytest.fixture
def home(tmp_path):
    (tmp_path / "prism.yaml").write_text("rounds:\n  max_rounds: 2\n  min_gain: 0.5\n"
                                         "  schedule_cron: '15 3 * * *'\n")
    return tmp_path


@pytest.fixture
def stack():
    with ExitStack() as context_managers:
        yield context_managers


def resources(home) -> dict:
    prism_home = PrismHome(home=str(home))
    return {"prism_home": prism_home, "store": StoreResource(prism_home=prism_home)}


def set_rounds_config(home, **values):
    lines = "".join(f"  {key}: {value}\n" for key, value in values.items())
    (home / "prism.yaml").write_text(f"rounds:\n{lines}")


def scores_land(instance: DagsterInstance, home, key: str, gvendi: float) -> None:
    """Round `key` finished: its diversity_scores are in the store and their materialization in the instance."""
    open_store(home / "store").write("diversity_scores", key, pl.DataFrame(
        {"metric": ["gvendi"], "value": [gvendi], "n": [10], "details": ["{}"]}))
    instance.report_runless_asset_event(AssetMaterialization(asset_key="diversity_scores", partition=key))


def tick(instance, home, cursor=None):
    with build_sensor_context(instance=instance, cursor=cursor, resources=resources(home)) as context:
        return next_round_sensor(context)


def test_sensor_adds_the_next_round_and_launches_it_once(home):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000"])
    scores_land(instance, home, "r000", 5.0)
    result = tick(instance, home)
    [request] = result.run_requests
    assert (request.partition_key, request.run_key) == ("r001", "prism_round:r001")
    [add] = result.dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == ("rounds", ["r001"])
    instance.add_dynamic_partitions("rounds", ["r001"])  # what the daemon does with the request

    again = tick(instance, home, cursor=result.cursor)
    assert not again.run_requests and "no new" in again.skip_reason.skip_message
    lost_cursor = tick(instance, home)
    assert not lost_cursor.run_requests and "r001 exists already" in lost_cursor.skip_reason.skip_message


def test_sensor_stops_below_min_gain_and_at_max_rounds(home):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001"])
    scores_land(instance, home, "r000", 5.0)
    cursor = tick(instance, home).cursor  # r001 exists: nothing to launch
    scores_land(instance, home, "r001", 5.2)
    low_gain = tick(instance, home, cursor=cursor)
    assert not low_gain.run_requests
    assert "gain of r001 is 0.2 < rounds.min_gain = 0.5" in low_gain.skip_reason.skip_message

    set_rounds_config(home, max_rounds=2, min_gain=0.1)
    [request] = tick(instance, home, cursor=cursor).run_requests
    assert request.partition_key == "r002" and request.tags["prism/after_round"] == "r001"
    instance.add_dynamic_partitions("rounds", ["r002"])
    scores_land(instance, home, "r002", 6.0)
    last = tick(instance, home, cursor=cursor)
    assert [r.partition_key for r in last.run_requests] == []
    assert "r002 is the last round (rounds.max_rounds = 2)" in last.skip_reason.skip_message


def test_schedule_is_off_by_default_and_launches_the_round_after_the_latest_finished_one(home, stack):
    defs = build_definitions(str(home))
    schedule = defs.resolve_schedule_def("round_schedule")
    assert schedule.cron_schedule == "15 3 * * *" and schedule.default_status == DefaultScheduleStatus.STOPPED
    assert {s.name: s.default_status for s in defs.sensors} == {
        "next_round_sensor": DefaultSensorStatus.RUNNING, "provenance_sensor": DefaultSensorStatus.RUNNING,
        "lost_run_sensor": DefaultSensorStatus.RUNNING}
    instance = stack.enter_context(instance_for_test())  # schedule contexts need a persistent instance

    def evaluate():
        tick_time = datetime(2026, 1, 1, 3, 15, tzinfo=UTC)
        with build_schedule_context(instance=instance, resources=resources(home),
                                    scheduled_execution_time=tick_time) as context:
            return schedule(context)

    first = evaluate()
    assert isinstance(first, RunRequest) and first.partition_key == "r000" and first.run_key == "prism_round:r000"
    assert instance.get_dynamic_partitions("rounds") == ["r000"]
    running = evaluate()
    assert isinstance(running, SkipReason) and "r000 has not finished" in running.skip_message
    scores_land(instance, home, "r000", 5.0)
    assert evaluate().partition_key == "r001"
    scores_land(instance, home, "r001", 5.1)
    stopped = evaluate()
    assert isinstance(stopped, SkipReason) and "rounds.min_gain" in stopped.skip_message
    assert instance.get_dynamic_partitions("rounds") == ["r000", "r001"]


def failure_message(result, step: str) -> str:
    return result.failure_data_for_node(step).error.message


def test_a_round_refuses_to_start_without_a_finished_previous_round(home):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r000", "r001"])
    kwargs = {"instance": instance, "resources": build_definitions(str(home)).resources, "raise_on_error": False}
    missing = materialize([generations], partition_key="r001", **kwargs)
    message = failure_message(missing, "generations")
    assert "round r001 refuses to start: round r000 is missing" in message and "materialize round r000" in message

    no_seeds = materialize([generations], partition_key="r000", **kwargs)
    assert "round r000 needs the seeds" in failure_message(no_seeds, "generations")
    failed = materialize([generations], partition_key="r001", **kwargs)  # r000's latest run failed
    assert "round r001 refuses to start: round r000 failed (generations)" in failure_message(failed, "generations")
    assert not open_store(home / "store").exists("generations", "r001")


def test_instance_settings_run_one_round_at_a_time(tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    ensure_instance_settings(dagster_home)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity.value == "run" and pools.default_pool_limit == 1
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        # An explicit limit, there before any run is queued (the default limit arrives too late).
        assert instance.event_log_storage.get_concurrency_info(ROUND_POOL).slot_count == 1
        instance.event_log_storage.set_concurrency_slots(ROUND_POOL, 2)  # an operator's own choice
    assert "enabled: true" in (dagster_home / "dagster.yaml").read_text()  # a key already set is kept
    ensure_instance_settings(dagster_home)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.event_log_storage.get_concurrency_info(ROUND_POOL).slot_count == 2
    graph = build_definitions(str(tmp_path)).resolve_asset_graph()
    for name in ROUND_ASSETS:
        node = graph.get(next(k for k in graph.get_all_asset_keys() if k.to_user_string() == name))
        assert node.pools == {ROUND_POOL} and node.backfill_policy == ONE_ROUND_PER_RUN
