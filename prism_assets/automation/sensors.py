"""Sensors that operate rounds.

`next_round_sensor` (running by default): when round rN's diversity scores land, it adds r(N+1) to
the `rounds` partitions and launches it with `prism_round`, until `rounds.max_rounds` or until rN's
G-Vendi gain is below `rounds.min_gain`. It is idempotent: its cursor is the last materialization it
read, the run key `prism_round:r<N+1>` is used once, and it never launches a round whose key already
exists (a backfill or an earlier tick made it).

`provenance_sensor` (running by default): when r(N-1)'s pool or clusters are rematerialized after
rN read them, it re-runs rN's `built_on_latest_previous_round` checks, which then fail in the UI until
rN is rebuilt.

`lost_run_sensor` (running by default): replaces a round run whose process died. With Dagster's
`DefaultRunLauncher` a run executes in a process of the code server, below the daemon; when the
daemon's host or process group is killed (SIGKILL), that process dies without reporting, its run
stays STARTED for ever, holds the `prism_rounds` slot, and every later round waits behind it —
Dagster's run monitoring cannot see it (this launcher has no worker health check) and its run retries
only follow runs that were marked failed. The sensor finds such runs (the pid of the launched
process, from the run's "Started process for run (pid: N)" event, no longer runs; it acts only with
Dagster's default launcher and queued coordinator, where the daemon launches every run as a process
of the code server that also evaluates this sensor, so the pid is looked up on the right host).
Then, in two ticks, it first launches a replacement run of the same round and assets (tags
`prism/replaces`, the backfill's id, and `dagster/priority` 1, so the queue starts it before later
rounds) and, once the replacement is queued, marks the dead run failed, which frees the slot. The
replacement reruns the round: the journal keeps generation's answers and the rest is a seeded
recomputation, so the tables equal an undisturbed run's (tests/integration/test_daemon_restart.py).
"""

import os
import time
from pathlib import Path

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultRunLauncher,
    DefaultSensorStatus,
    QueuedRunCoordinator,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from prism_assets.automation.jobs import READS_PREVIOUS, WRITER, prism_round, round_provenance_checks
from prism_assets.partitions import rounds
from prismatic.config import RoundsConfig
from prismatic.rounds import SEED_ROUND, previous_round, round_key, round_number
from prismatic.storage.base import Store
from prismatic.synthesis.steps import pool_gvendi
from resources.home import PrismHome
from resources.store import StoreResource

PARTITION_TAG = "dagster/partition"
BATCH = 100
"""Materializations a sensor reads per tick."""


def gvendi_gain(store: Store, key: str) -> float | None:
    """Pool G-Vendi of round `key` minus that of the previous round (None for r000, or when the previous
    round's scores are gone)."""
    if key == SEED_ROUND or not store.exists("diversity_scores", previous_round(key)):
        return None

    return pool_gvendi(store, key) - pool_gvendi(store, previous_round(key))


def stop_reason(key: str, gain: float | None, config: RoundsConfig) -> str | None:
    """Why no round should follow round `key`, or None when the next one should be launched."""
    if round_number(key) >= config.max_rounds:
        return f"{key} is the last round (rounds.max_rounds = {config.max_rounds})"
    if gain is not None and gain < config.min_gain:
        return f"the G-Vendi gain of {key} is {gain:.4g} < rounds.min_gain = {config.min_gain:g}"
    return None


def next_round_request(key: str, store: Store, config: RoundsConfig, existing: set[str]) -> RunRequest | str:
    """The run of the round after finished round `key`, or the reason there is none."""
    following = round_key(round_number(key) + 1)
    if following in existing:
        return f"{following} exists already"
    reason = stop_reason(key, gvendi_gain(store, key), config)
    if reason:
        return reason
    return RunRequest(run_key=f"prism_round:{following}", partition_key=following,
                      tags={"prism/trigger": "next_round_sensor", "prism/after_round": key})


@sensor(job=prism_round, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="When a round's diversity_scores land, add the next round and launch it, until "
                    "rounds.max_rounds or a G-Vendi gain below rounds.min_gain (prism.yaml).")
def next_round_sensor(context: SensorEvaluationContext, prism_home: PrismHome, store: StoreResource) -> SensorResult:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("diversity_scores"), after_storage_id=after),
        limit=BATCH, ascending=True).records
    if not records:
        return SensorResult(skip_reason="no new diversity_scores", cursor=context.cursor)
    config = prism_home.config().rounds
    existing = set(context.instance.get_dynamic_partitions(rounds.name))
    requests, reasons = [], []
    for record in records:
        key = record.partition_key
        decision = next_round_request(key, store.store(), config, existing)
        if isinstance(decision, RunRequest):
            requests.append(decision)
            existing.add(decision.partition_key)
        else:
            reasons.append(f"after {key}: {decision}")
    cursor = str(records[-1].storage_id)
    if not requests:
        return SensorResult(skip_reason="; ".join(reasons), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor,
                        dynamic_partitions_requests=[rounds.build_add_request([r.partition_key for r in requests])])


def stale_next_round(store: Store, asset: str, key: str, run_id: str) -> str | None:
    """The round after `key` when it was built on another run of `asset`'s tables of `key` than `run_id`."""
    following = round_key(round_number(key) + 1)
    for reader, (table, provenance_key) in READS_PREVIOUS.items():
        if WRITER[table] != asset or not store.exists(reader, following):
            continue
        used = store.read_metadata(reader, following).get(provenance_key) or {}
        if used.get("run_id") != run_id:
            return following
    return None


@sensor(job=round_provenance_checks, minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING,
        description="When a round's pool or clusters are rematerialized after the next round read them, re-run "
                    "the next round's built_on_latest_previous_round checks (they fail until it is rebuilt).")
def provenance_sensor(context: SensorEvaluationContext, store: StoreResource) -> SensorResult:
    after = int(context.cursor) if context.cursor else None
    batches = [context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), after_storage_id=after), limit=BATCH, ascending=True).records
        for asset in sorted({WRITER[table] for table, _ in READS_PREVIOUS.values()})]
    # A full batch may have more after it: read no further than its last record this tick.
    until = min((batch[-1].storage_id for batch in batches if len(batch) == BATCH), default=None)
    records = sorted((record for batch in batches for record in batch if until is None or record.storage_id <= until),
                     key=lambda record: record.storage_id)
    if not records:
        return SensorResult(skip_reason="no new pool or clusters materializations", cursor=context.cursor)
    requests = {}
    for record in records:
        following = stale_next_round(store.store(), record.asset_key.to_user_string(), record.partition_key,
                                     record.run_id)
        if following:
            requests[following] = RunRequest(
                run_key=f"provenance:{following}:{record.storage_id}", tags={PARTITION_TAG: following,
                                                                             "prism/trigger": "provenance_sensor"})
    cursor = str(records[-1].storage_id)
    if not requests:
        return SensorResult(skip_reason="no later round was built on an older materialization", cursor=cursor)
    return SensorResult(run_requests=list(requests.values()), cursor=cursor)


REPLACES_TAG = "prism/replaces"
"""Tag of a run launched by `lost_run_sensor`: the id of the dead run it replaces."""
BACKFILL_TAG = "dagster/backfill"
PRIORITY_TAG = "dagster/priority"
WORKER_STARTED = "Started process for run"
"""How Dagster's launcher's engine event about the run's process begins (its metadata holds the pid)."""


def run_worker(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, unix time of the report) of the process a run launcher started for run `run_id`; None for a
    run with no such process (executed in-process by `prism run`)."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid")
        if pid is not None and (entry.dagster_event.message or "").startswith(WORKER_STARTED):
            return int(pid.value), entry.timestamp
    return None


def process_running(pid: int, started_by: float) -> bool:
    """Whether process `pid` runs and is the one that existed at unix time `started_by` (a pid reused
    by a process started later is not it). Linux `/proc`; elsewhere only whether the pid exists."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: only whether the pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    return fields[0] != "Z" and started <= started_by + 1.0


def round_of(run: DagsterRun) -> str | None:
    """The round key of a round run (a backfill run names it as a one-partition range)."""
    return run.tags.get(PARTITION_TAG) or run.tags.get("dagster/asset_partition_range_start")


ROUND_JOBS = (prism_round.name, "__ASSET_JOB")
"""Jobs whose runs materialize round assets: `prism_round`, and the asset jobs of the UI and backfills."""


def replacement_request(run: DagsterRun) -> RunRequest:
    """A run of the same assets and round as dead run `run`, in its backfill (if any), queued before later
    rounds."""
    tags = {REPLACES_TAG: run.run_id, PRIORITY_TAG: "1", "prism/trigger": "lost_run_sensor"}
    if BACKFILL_TAG in run.tags:
        tags[BACKFILL_TAG] = run.tags[BACKFILL_TAG]
    return RunRequest(run_key=f"replace:{run.run_id}", partition_key=round_of(run), tags=tags,
                      asset_selection=sorted(run.asset_selection, key=str) if run.asset_selection else None)


@sensor(job=prism_round, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING,
        description="Replace a round run whose process died (e.g. killed with the daemon): launch the round "
                    "again ahead of later rounds, then mark the dead run failed.")
def lost_run_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    # Only where the daemon launches every run as a process of the code server that evaluates this
    # sensor: then a pid that does not run here is a dead run, not a run on another host.
    if not isinstance(instance.run_launcher, DefaultRunLauncher) or \
            not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return SensorResult(skip_reason="runs are not launched by the daemon as local processes "
                                        "(DefaultRunLauncher with QueuedRunCoordinator)")
    requests, notes = [], []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        if run.job_name not in ROUND_JOBS:
            continue
        worker = run_worker(instance, run.run_id)
        if worker is None or round_of(run) is None or process_running(*worker):
            continue
        replacement = instance.get_runs(RunsFilter(tags={REPLACES_TAG: run.run_id}), limit=1)
        if not replacement:
            requests.append(replacement_request(run))
            notes.append(f"run {run.run_id} of {round_of(run)} lost its process (pid {worker[0]}): replacing it")
            continue
        instance.report_run_failed(run, message=(
            f"the process of this run (pid {worker[0]}) ended without finishing the run (killed with the daemon "
            f"or its host?); run {replacement[0].run_id} replaces it (lost_run_sensor, "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})"))
        notes.append(f"run {run.run_id} marked failed, replaced by {replacement[0].run_id}")
    if not requests:
        return SensorResult(skip_reason="; ".join(notes) or "no round run lost its process")
    return SensorResult(run_requests=requests)
