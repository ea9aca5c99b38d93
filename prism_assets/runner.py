"""Run rounds in-process on the home's Dagster instance (`prism demo`, `prism run`).

The instance lives in `$PRISM_HOME/dagster`, so `DAGSTER_HOME=$PRISM_HOME/dagster dagster dev -w
workspace.yaml` shows the same runs, lineage and partitions afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from dagster import DagsterEventType, DagsterInstance

from prismatic.config import load_config
from prismatic.errors import PrismError
from prismatic.store import Store
from prismatic.synthesis import SEED_ROUND, previous_round


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Console logging of in-process runs: warnings and errors only (the full log is in the instance)."""


def instance_for(home: Path) -> DagsterInstance:
    """The persistent Dagster instance under `<home>/dagster` (SQLite storage)."""
    dagster_home = (home / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    settings = dagster_home / "dagster.yaml"
    if not settings.exists():
        settings.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return DagsterInstance.get()


def run_round(home: Path, key: str, instance: DagsterInstance | None = None) -> dict:
    """Materialize every asset of round `key` in one in-process run; returns per-asset seconds."""
    from prism_assets.definitions import build_definitions

    os.environ["PRISM_HOME"] = str(home)
    config = load_config(home)
    instance = instance or instance_for(home)
    store = Store(config.store_uri)
    defs = build_definitions(str(home))
    if not store.exists("seeds", SEED_ROUND):
        defs.resolve_job_def("seed_job").execute_in_process(instance=instance, run_config=QUIET)
    if key != SEED_ROUND and not store.exists("diversity_scores", previous_round(key)):
        raise PrismError(f"round {key} needs round {previous_round(key)} first: it is missing or did not finish "
                         f"(run `prism run --round {previous_round(key)}`)")
    instance.add_dynamic_partitions("rounds", [key])
    result = defs.resolve_job_def("prism_round").execute_in_process(partition_key=key, instance=instance,
                                                                    run_config=QUIET, raise_on_error=False)
    if not result.success:
        failure = next((e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE), None)
        error = failure.event_specific_data.error if failure else None
        while error is not None and error.cause is not None:  # the user's exception, not Dagster's wrapper
            error = error.cause
        message = error.message.strip() if error else "see the Dagster run log"
        raise PrismError(f"round {key} failed in step {failure.step_key if failure else '?'}: {message}")
    return {"round": key, "run_id": result.run_id, "seconds": step_seconds(instance, result.run_id)}


def step_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    starts, seconds = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS and event.step_key in starts:
            seconds[event.step_key] = round(entry.timestamp - starts[event.step_key], 2)
    return seconds


def round_summary(home: Path, keys: list[str]) -> pl.DataFrame:
    """Per round: generated problems and solutions, verified, kept, pool size, G-Vendi of the pool."""
    store = Store(load_config(home).store_uri)
    rows = []
    for key in keys:
        gens = store.read("generations", key)
        scores = store.read("diversity_scores", key)
        rows.append({
            "round": key,
            "problems": gens.filter(kind="problem").height,
            "solutions": gens.filter(kind="solution").height,
            "verified": store.read("verified_samples", key).height,
            "kept": int(store.read("selection", key)["kept"].sum()),
            "pool": store.read("pool", key).height,
            "gvendi": round(scores.filter(metric="gvendi")["value"][0], 3),
        })
    return pl.DataFrame(rows)
