"""The guard of the one undeclared edge: round rN refuses to start unless r(N-1) is complete.

Dagster cannot see that rN reads r(N-1) (docs/architecture.md#the-undeclared-edge), so nothing in
the graph stops rN from running after a failed or missing r(N-1). The assets that read the previous
round (generations, selection, pool) call `require_previous_round` first; it raises a `Failure` that
names the round, what is wrong with it and what to run, and nothing of rN is written.
"""

from __future__ import annotations

from dagster import AssetExecutionContext, AssetKey, AssetPartitionStatus, Failure

from prism_assets.automation.jobs import ROUND_ASSETS
from prism_assets.partitions import rounds
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.storage.schema import ROUND_TABLES
from resources.store import StoreResource


def previous_round_problem(context: AssetExecutionContext, store: StoreResource, key: str) -> str | None:
    """Why round `key` cannot start now, or None when it can.

    r000 needs the seeds in the store. rN needs every table of r(N-1) in the store, and no asset of
    r(N-1) whose latest run failed or is still in progress (per the Dagster instance).
    """
    tables = store.store()
    if key == SEED_ROUND:
        if not tables.exists("seeds", SEED_ROUND):
            return "round r000 needs the seeds: materialize the `seeds` asset (job `seed_job`) first"
        return None
    before = previous_round(key)
    by_status: dict[AssetPartitionStatus, list[str]] = {}
    if before in context.instance.get_dynamic_partitions(rounds.name):
        for name in ROUND_ASSETS:
            status = (context.instance.get_status_by_partition(AssetKey(name), [before], rounds) or {}).get(before)
            if status is not None:
                by_status.setdefault(status, []).append(name)
    if AssetPartitionStatus.FAILED in by_status:
        return (f"round {key} refuses to start: round {before} failed "
                f"({', '.join(by_status[AssetPartitionStatus.FAILED])}); rematerialize round {before}, then {key}")
    if AssetPartitionStatus.IN_PROGRESS in by_status:
        return (f"round {key} refuses to start: round {before} is still running "
                f"({', '.join(by_status[AssetPartitionStatus.IN_PROGRESS])}); launch {key} after it finished")
    missing = [table for table in ROUND_TABLES if not tables.exists(table, before)]
    if missing:
        return (f"round {key} refuses to start: round {before} is missing ({', '.join(missing)} not in the "
                f"store at {tables.uri}); materialize round {before} first")
    return None


def require_previous_round(context: AssetExecutionContext, store: StoreResource) -> None:
    """Raise a `Failure` (no retries) when the round of this run cannot start; see `previous_round_problem`."""
    key = context.partition_key
    problem = previous_round_problem(context, store, key)
    if problem:
        raise Failure(description=problem, allow_retries=False,
                      metadata={"round": key, "previous_round": previous_round(key) if key != SEED_ROUND else ""})
