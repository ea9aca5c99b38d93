"""Asset checks of every round.

They read the stored files column by column (`Store.read(..., columns=...)`, `Store.read_schema`),
not through the full `Store.read`, which would refuse a bad file before the check could say what is
wrong with it. Blocking checks stop the rest of the round when
bad data would flow on: a wrong schema, repeated ids, too few verified problems, features made
with another projection, empty clusters. The others judge history and trends:
`built_on_latest_previous_round` fails once r(N-1) was rematerialized after rN read it (the
`provenance_sensor` re-runs it when that happens), and `gvendi_non_decreasing` warns when the pool
became less diverse.

A check runs in the run of its round and reads that round's files; every result carries the round
in its metadata (`round`) and its description. The checks are not partitioned: Dagster's
partitioned checks (a preview in 1.13) record no partition for the evaluations of backfill runs,
which name their round by a one-round range (`ONE_ROUND_PER_RUN`), and leave those evaluations
planned forever. So the UI shows each check's latest result, and the round it was about.

`round_checks` (jobs.py) runs all of them for one round without materializing anything.
"""

from collections.abc import Callable

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from prism_assets.automation.jobs import PROVENANCE_CHECK, READS_PREVIOUS, ROUND_ASSET_TABLES
from prismatic.rounds import SEED_ROUND, previous_round, round_sort_key
from prismatic.storage.base import Store
from prismatic.storage.deltas import read_as_of
from prismatic.storage.schema import schema
from prismatic.synthesis.steps import pool_gvendi
from resources.home import PrismHome
from resources.store import StoreResource


def result(key: str, failures: list[str], note: str | None = None,
           severity: AssetCheckSeverity = AssetCheckSeverity.ERROR, **metadata) -> AssetCheckResult:
    """Passed when there are no `failures`; the description names the round and what is wrong (or `note`)."""
    text = "; ".join(failures) if failures else note
    return AssetCheckResult(passed=not failures, severity=severity, description=f"{key}: {text}" if text else None,
                            metadata={"round": key, **metadata})


def schema_problems(store: Store, table: str, key: str) -> list[str]:
    """How the columns of `table`'s file for round `key` differ from its schema (docs/data-model.md#tables)."""
    if not store.exists(table, key):
        return [f"{table}: no file at {store.location(table, key)}"]
    have = store.read_schema(table, key)
    width = next((dtype.shape[0] for dtype in have.values() if isinstance(dtype, pl.Array)), 1)
    want = schema(table, dim=width)
    problems = [f"{table}: missing column {name!r} ({dtype})" for name, dtype in want.items() if name not in have]
    problems += [f"{table}: unexpected column {name!r}" for name in have if name not in want]
    problems += [f"{table}: column {name!r} is {have[name]}, expected {dtype}"
                 for name, dtype in want.items() if name in have and have[name] != dtype]
    if not problems and list(have) != list(want):
        problems.append(f"{table}: columns in order {list(have)}, expected {list(want)}")
    return problems


def _ids(store: Store, table: str, key: str) -> pl.Series:
    """The ids of `table` as of round `key` (the pool: of every round up to `key`, `read_as_of`)."""
    return read_as_of(store, table, key, columns=["id"])["id"]


def _schema_check(asset: str) -> AssetChecksDefinition:
    tables = ROUND_ASSET_TABLES[asset]

    @asset_check(asset=AssetKey(asset), name="schema", blocking=True,
                 description=f"The round's {', '.join(tables)} file(s) have exactly the columns and dtypes of "
                             "docs/data-model.md#tables, in order.")
    def check(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
        key = context.partition_key
        problems = [p for table in tables for p in schema_problems(store.store(), table, key)]
        return result(key, problems, tables=", ".join(tables))

    return check


def _unique_ids_check(asset: str, description: str,
                      across: Callable[[Store, str, pl.Series], list[str]] | None = None) -> AssetChecksDefinition:
    @asset_check(asset=AssetKey(asset), name="unique_ids", blocking=True, description=description)
    def check(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
        key, tables = context.partition_key, store.store()
        ids = _ids(tables, asset, key)
        repeated = ids.filter(ids.is_duplicated()).unique(maintain_order=True).head(5).to_list()
        earlier = across(tables, key, ids) if across else []
        problems = ([f"repeated in {asset}: {repeated}"] if repeated else []) + (
            [f"already in the pool of {previous_round(key)}: {earlier}"] if earlier else [])
        return result(key, problems, rows=len(ids), repeated=MetadataValue.json(repeated),
                      in_previous_pool=MetadataValue.json(earlier))

    return check


def _already_pooled(store: Store, key: str, ids: pl.Series) -> list[str]:
    if key == SEED_ROUND:
        return []
    pooled = _ids(store, "pool", previous_round(key))
    return ids.filter(ids.is_in(pooled.implode())).head(5).to_list()


def _provenance_check(asset: str) -> AssetChecksDefinition:
    table, provenance_key = READS_PREVIOUS[asset]

    @asset_check(asset=AssetKey(asset), name=PROVENANCE_CHECK,
                 description=f"The {table} of the previous round that this round read (round, run, data version "
                             f"in the file's provenance) is still the latest one; fails after r(N-1)'s {table} "
                             "was rematerialized, until this round is rebuilt on it.")
    def check(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
        key, tables = context.partition_key, store.store()
        if key == SEED_ROUND:
            return result(key, [], note="the seed round reads no previous round")
        used = tables.read_metadata(asset, key).get(provenance_key) or {}
        before = previous_round(key)
        if not tables.exists(table, before):
            return result(key, [f"{table} of {before} is no longer in the store"], used=MetadataValue.json(used))
        latest = {"round": before, "run_id": str(tables.read_metadata(table, before).get("run_id", "")),
                  "data_version": tables.data_version(table, before)}
        metadata = {"used": MetadataValue.json(used), "latest": MetadataValue.json(latest)}
        if latest["run_id"]:
            metadata["latest_run"] = MetadataValue.dagster_run(latest["run_id"])
        problems = [] if used.get("round") == before and used.get("data_version") == latest["data_version"] else [
            f"{asset} was built on {table} {used.get('round')} of run {used.get('run_id')} (data version "
            f"{used.get('data_version')}), but {table} {before} is now run {latest['run_id']} (data version "
            f"{latest['data_version']}): rematerialize round {key} (and the rounds after it)"]
        return result(key, problems, **metadata)

    return check


@asset_check(asset=AssetKey("verified_samples"), name="verified_pass_rate", blocking=True,
             description="Problems with a verified solution / problems solved (dedup and decontamination "
                         "drop some before solving) is at least `rounds.min_pass_rate` of prism.yaml.")
def verified_pass_rate(context: AssetCheckExecutionContext, prism_home: PrismHome,
                       store: StoreResource) -> AssetCheckResult:
    key, tables = context.partition_key, store.store()
    floor = prism_home.config().rounds.min_pass_rate
    if key == SEED_ROUND:
        return result(key, [], note="seeds are verified by their reference answers", floor=floor)
    solutions = tables.read("generations", key, columns=["kind", "parent_ids"]).filter(kind="solution")
    problems = solutions["parent_ids"].list.first().n_unique()  # problems dropped before solving do not count
    verified = tables.read("verified_samples", key, columns=["problem_id"])["problem_id"].n_unique()
    rate = verified / problems if problems else 0.0
    failures = ([] if rate >= floor else [f"{verified}/{problems} problems verified ({rate:.1%}) < floor {floor:.1%}"]
                ) if problems else ["no problem was solved"]
    return result(key, failures, pass_rate=round(rate, 4), floor=floor, problems_solved=problems,
                  problems_verified=verified)


@asset_check(asset=AssetKey("gradient_features"), name="projection_consistent", blocking=True,
             description="Feature width equals the `dim` column, and proxy, mode, projection kind, seed and "
                         "dimension equal those of every earlier round (features of different projections "
                         "cannot share a G-Vendi or a clustering).")
def projection_consistent(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
    key, tables = context.partition_key, store.store()

    def identity(round_key: str) -> dict | None:
        meta = tables.read_metadata("gradient_features", round_key)
        return {"proxy": meta.get("proxy"), **meta["projection"]} if meta.get("projection") else None

    frame = tables.read("gradient_features", key, columns=["feature", "dim"])
    if frame.is_empty():
        return result(key, [], note="no features (no verified samples)")
    problems = []
    width = frame.schema["feature"].shape[0]
    if set(frame["dim"].unique().to_list()) != {width}:
        problems.append(f"feature width {width} but dim column {sorted(frame['dim'].unique().to_list())}")
    mine = identity(key) or {}
    earlier = [r for r in tables.rounds("gradient_features") if round_sort_key(r) < round_sort_key(key)]
    for other in earlier:
        theirs = identity(other)
        if theirs is not None and theirs != mine:
            changed = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
            problems.append(f"{', '.join(changed)} differ from {other}: {mine} vs {theirs}")
            break
    return result(key, problems, projection=MetadataValue.json(mine), width=width, rounds_compared=len(earlier))


@asset_check(asset=AssetKey("clusters"), name="no_empty_clusters", blocking=True,
             description="Every centroid has members: cluster ids are 0..k-1, each cluster's member count in "
                         "`clusters` equals its `size` in `centroids` (> 0), and the sizes add up to the pool.")
def no_empty_clusters(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
    key, tables = context.partition_key, store.store()
    centroids = tables.read("centroids", key, columns=["cluster", "size"])
    members = tables.read("clusters", key, columns=["cluster"])["cluster"].value_counts()
    pool_size = _ids(tables, "pool", key).len()
    joined = (centroids.join(members.rename({"count": "members"}), on="cluster", how="full", coalesce=True)
              .fill_null(0))
    empty = joined.filter(pl.col("members") == 0)["cluster"].to_list()
    mismatched = joined.filter(pl.col("members") != pl.col("size"))["cluster"].to_list()
    problems = []
    if empty:
        problems.append(f"{len(empty)} empty cluster(s): {empty[:10]}")
    if sorted(centroids["cluster"].to_list()) != list(range(len(centroids))):
        problems.append("cluster ids are not 0..k-1")
    if mismatched:
        problems.append(f"member counts differ from centroid sizes for cluster(s) {mismatched[:10]}")
    if int(centroids["size"].sum()) != pool_size:
        problems.append(f"sizes add up to {int(centroids['size'].sum())}, the pool has {pool_size}")
    return result(key, problems, k=len(centroids), empty=len(empty), pool_size=pool_size)


@asset_check(asset=AssetKey("diversity_scores"), name="gvendi_non_decreasing",
             description="The pool's G-Vendi is not below the previous round's (a warning: the round is kept).")
def gvendi_non_decreasing(context: AssetCheckExecutionContext, store: StoreResource) -> AssetCheckResult:
    key, tables = context.partition_key, store.store()
    now = pool_gvendi(tables, key)
    if key == SEED_ROUND:
        return result(key, [], severity=AssetCheckSeverity.WARN, gvendi=now)
    before = pool_gvendi(tables, previous_round(key))
    problems = [] if now >= before else [f"G-Vendi fell from {before:.4f} ({previous_round(key)}) to {now:.4f}"]
    return result(key, problems, severity=AssetCheckSeverity.WARN, gvendi=now, previous_gvendi=before,
                  gain=now - before)


PROVENANCE_CHECKS = [_provenance_check(asset) for asset in READS_PREVIOUS]

ROUND_CHECKS = [
    *(_schema_check(asset) for asset in ROUND_ASSET_TABLES),
    _unique_ids_check("generations", "No id occurs twice among the round's generations."),
    _unique_ids_check("verified_samples", "No id occurs twice among the round's verified samples, and none is "
                                          "already in the previous round's pool.", across=_already_pooled),
    _unique_ids_check("pool", "No id occurs twice in the pool as of the round (so no sample was added twice, in "
                              "this round or in two)."),
    verified_pass_rate,
    projection_consistent,
    no_empty_clusters,
    gvendi_non_decreasing,
    *PROVENANCE_CHECKS,
]
"""Every check of the round assets."""
