"""A real `dagster-daemon` killed with SIGKILL in the middle of a 3-round backfill, then restarted.

The webserver and the daemon run on 127.0.0.1 with a temporary DAGSTER_HOME (as in test_services.py);
rounds r000-r002 are backfilled through GraphQL against the deterministic fake LLM (tests/fake_llm.py)
with the tiny random proxy. While r001's run is in progress the daemon's whole process group (the
daemon, the code server it started and the run worker that code server launched) is killed with
SIGKILL, as a crashed host or container would go; then the daemon is started again. Every round must
finish exactly once, in order, and the tables must equal those of rounds run without interruption.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, materialize
from fake_llm import ROUND_CONFIG, DeterministicServer
from services import Services, tag

from prism_assets.assets.seeds import seeds
from prism_assets.automation.instance import ensure_instance_settings
from prism_assets.automation.jobs import ROUND_ASSETS
from prism_assets.automation.sensors import REPLACES_TAG
from prism_assets.definitions import build_definitions
from prismatic.storage import schema
from prismatic.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "daemon_restart"
API_KEY = "sk-daemon-test-SECRET-51c0aa"
ROUNDS = ["r000", "r001", "r002"]
ROUND_TABLES = [*schema.ROUND_TABLES, "rejections"]

pytestmark = [pytest.mark.slow, pytest.mark.services]


def make_home(path: Path, proxy: Path, url: str) -> Path:
    path.mkdir(parents=True)
    (path / "prism.yaml").write_text(ROUND_CONFIG.format(proxy=proxy, url=url) + "rounds:\n  max_rounds: 2\n")
    return path


def run_rounds_in_process(home: Path) -> None:
    """The reference: seeds, then r000-r002 one after another in-process, on an ephemeral instance."""
    defs = build_definitions(str(home))
    instance = DagsterInstance.ephemeral()
    assert materialize([seeds], instance=instance, resources=defs.resources).success
    instance.add_dynamic_partitions("rounds", ROUNDS)
    for key in ROUNDS:
        assert defs.resolve_job_def("prism_round").execute_in_process(partition_key=key, instance=instance).success


def frame_without_timings(frame: pl.DataFrame) -> pl.DataFrame:
    """The table with the timings some metrics record in `details` (key `seconds`) and the seconds each
    generation request took (`latency_s`) removed."""
    if "latency_s" in frame.columns:
        frame = frame.drop("latency_s")
    if "details" not in frame.columns:
        return frame

    def strip(details: str) -> str:
        value = json.loads(details)
        return json.dumps({k: v for k, v in value.items() if k != "seconds"} if isinstance(value, dict) else value)

    return frame.with_columns(pl.col("details").map_elements(strip, return_dtype=pl.String))


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (Linux /proc)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def server():
    started = DeterministicServer()
    yield started
    started.close()


def materializations(instance: DagsterInstance, asset: str) -> list[tuple[str, str, int]]:
    """(round, run id, storage id) of every materialization of `asset`, oldest first."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=1000,
                                              ascending=True).records
    return [(record.partition_key, record.run_id, record.storage_id) for record in records]


def wait_for(condition, what: str, services: Services, log: str, timeout: float = 600, poll_s: float = 1.0):
    """Poll `condition()` until it returns something true; fails after `timeout` s with the daemon's log."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} after {timeout:g} s\n{services.tail(log)}"
        time.sleep(poll_s)
    return value


def test_daemon_killed_mid_backfill_then_restarted(tmp_path, tiny_model_dir, server):
    reference = make_home(tmp_path / "reference", tiny_model_dir, server.url)
    os.environ["PRISM_TEST_API_KEY"] = API_KEY  # the in-process reference reads the key from here
    run_rounds_in_process(reference)

    home = make_home(tmp_path / "home", tiny_model_dir, server.url)
    ensure_instance_settings(home / "dagster")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    services = Services(home, ARTIFACTS, env={"PRISM_TEST_API_KEY": API_KEY})
    instance = DagsterInstance.from_config(str(services.dagster_home))
    try:
        assert materialize([seeds], instance=instance, resources=build_definitions(str(home)).resources).success
        services.start("dagster-webserver", "-h", "127.0.0.1", "-p", str(services.port))
        backfill = services.launch_backfill(ROUNDS, list(ROUND_ASSETS), "rounds r000-r002")
        started = time.monotonic()
        daemon = services.start("dagster-daemon", "run", log="dagster-daemon-1")

        # r001's run is in progress and has written its first table: kill the daemon's process group.
        def r001_in_progress() -> str | None:
            assert daemon.poll() is None, services.tail("dagster-daemon-1")
            done = {(key, run) for key, run, _ in materializations(instance, "generations")}
            return next((run["runId"] for run in services.backfill_runs(backfill)
                         if tag(run, "dagster/asset_partition_range_start") == "r001" and run["status"] == "STARTED"
                         and ("r001", run["runId"]) in done), None)

        lost = wait_for(r001_in_progress, "r001 did not start", services, "dagster-daemon-1")
        killed_processes = process_tree(daemon.pid)
        killed_at = time.monotonic()
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        wait_for(lambda: not any(running(pid) for pid in killed_processes), "the killed processes still run",
                 services, "dagster-daemon-1", timeout=30, poll_s=0.1)
        assert instance.get_run_by_id(lost).status == DagsterRunStatus.STARTED  # nobody reported its end

        restarted = time.monotonic()
        services.start("dagster-daemon", "run", log="dagster-daemon-2")
        status = wait_for(lambda: (s := services.backfill_status(backfill)) not in ("REQUESTED", "CANCELING") and s,
                          "backfill not done", services, "dagster-daemon-2", timeout=900, poll_s=3)
        done_at = time.monotonic()
    finally:
        services.stop()

    assert status == "COMPLETED_SUCCESS"
    runs = {run.run_id: run for run in instance.get_runs()}
    # The lost run was replaced by lost_run_sensor, ahead of r002, and then marked failed.
    replacement = next(run for run in runs.values() if run.tags.get(REPLACES_TAG) == lost)
    assert runs[lost].status == DagsterRunStatus.FAILURE and replacement.status == DagsterRunStatus.SUCCESS
    assert replacement.tags["dagster/partition"] == "r001" and replacement.tags["dagster/backfill"] == backfill
    # Every round finished exactly once, in order: one diversity_scores materialization each.
    finished = materializations(instance, "diversity_scores")
    assert [key for key, _, _ in finished] == ROUNDS
    winners = [run_id for _, run_id, _ in finished]
    assert winners[1] == replacement.run_id and all(runs[run_id].status == DagsterRunStatus.SUCCESS
                                                    for run_id in winners)
    records = {record.dagster_run.run_id: record for record in instance.get_run_records()}
    spans = [(records[run_id].start_time, records[run_id].end_time) for run_id in winners]
    assert all(end <= following for (_, end), (following, _) in zip(spans, spans[1:]))
    # No other round run succeeded; the only failure is the lost run.
    round_runs = [run for run in runs.values() if run.job_name in ("prism_round", "__ASSET_JOB")
                  and (run.tags.get("dagster/partition") or run.tags.get("dagster/asset_partition_range_start"))]
    assert sorted(run.run_id for run in round_runs if run.status == DagsterRunStatus.SUCCESS) == sorted(winners)
    assert [run.run_id for run in round_runs if run.status != DagsterRunStatus.SUCCESS] == [lost]

    # The tables equal those of the undisturbed rounds, G-Vendi included.
    got, want = open_store(home / "store"), open_store(reference / "store")
    assert frame_without_timings(got.read("seeds", "r000")).equals(frame_without_timings(want.read("seeds", "r000")))
    for key in ROUNDS:
        for table in ROUND_TABLES:
            assert frame_without_timings(got.read(table, key)).equals(
                frame_without_timings(want.read(table, key))), f"{table}/{key}"
        gvendi = [store.read("diversity_scores", key).filter(pl.col("metric") == "gvendi")["value"].item()
                  for store in (got, want)]
        assert gvendi[0] == gvendi[1] and gvendi[0] > 1.0
    replaced_at = records[replacement.run_id].start_time
    print(f"\nkilled {len(killed_processes)} processes {killed_at - started:.1f} s into the backfill; "
          f"replacement of r001 started {replaced_at - (time.time() - (time.monotonic() - restarted)):.1f} s after "
          f"the daemon's restart; backfill done {done_at - restarted:.1f} s after it (status {status})")
