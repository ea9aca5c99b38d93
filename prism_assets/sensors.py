"""Sensors that operate rounds.

`next_round_sensor` (running by default): when round rN's diversity scores land, it adds r(N+1) to
the `rounds` partitions and launches it with `prism_round`, until `rounds.max_rounds` or until rN's
G-Vendi gain is below `rounds.min_gain`. It is idempotent: its cursor is the last materialization it
read, the run key `prism_round:r<N+1>` is used once, and it never launches a round whose key already
exists (a backfill or an earlier tick made it).

`provenance_sensor` (running by default): when r(N-1)'s pool or clusters are rematerialized after
rN read them, it re-runs rN's `built_on_latest_previous_round` checks, which then fail in the UI until
rN is rebuilt.
"""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from prism_assets.jobs import READS_PREVIOUS, WRITER, prism_round, round_provenance_checks
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
