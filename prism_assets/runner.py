"""Run rounds on the home's Dagster instance from the command line (`prism demo`, `prism run`).

The run executes in this process with the executor of `orchestration.executor`: in-process (the
default) runs every step here; multiprocess starts a process per step (feature shards side by side)
and k8s a pod per step, both loading the job through `prism_round_job`.

The instance lives in `$PRISM_HOME/dagster`, so `DAGSTER_HOME=$PRISM_HOME/dagster dagster dev -w
workspace.yaml` shows the same runs, lineage and partitions afterwards.

A round is run under the store's lock of that round (`Store.lock_round`): a second `prism run` of
the same round is refused before it starts anything. Everything a run checks (the config, the
previous round, the seed file, the decontamination lists) is checked before the lock is taken and
before anything is written. A run killed with SIGKILL stays STARTED in the instance; the next run of
that round (which can take the lock only because the killed one no longer holds it) marks it failed,
and names the vLLM engine processes left running by a killed owner (it does not stop them).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

import polars as pl
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter, reconstructable
from dagster._core.execution.api import execute_run

from prism_assets.instance import ensure_instance_settings
from prismatic.config import load_config
from prismatic.data import load_seeds
from prismatic.engines import orphaned_vllm_engines
from prismatic.errors import PrismError
from prismatic.quality import read_benchmark_texts
from prismatic.store import Store, open_store
from prismatic.synthesis import SEED_ROUND, pool_gvendi, previous_round


log = logging.getLogger(__name__)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Console logging of in-process runs: warnings and errors only (the full log is in the instance)."""
FAILURES = {DagsterEventType.STEP_FAILURE}
"""The events whose error `run_round` reports when a run fails."""
STORE_TAG = "prism/store"
"""Tag of runs started by `run_round`: the store root they write (their lock is that store's)."""


def instance_for(home: Path) -> DagsterInstance:
    """The persistent Dagster instance under `<home>/dagster` (storage: prism.yaml's `orchestration`)."""
    dagster_home = ensure_instance_settings(home / "dagster", load_config(home).orchestration).parent
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return DagsterInstance.get()


def run_round(home: Path, key: str, instance: DagsterInstance | None = None) -> dict:
    """Materialize every asset of round `key` in one in-process run; returns per-asset seconds."""
    from prism_assets.definitions import build_definitions

    os.environ["PRISM_HOME"] = str(home)
    config = load_config(home)
    store = open_store(config)
    if key != SEED_ROUND and not store.exists("diversity_scores", previous_round(key)):
        raise PrismError(f"round {key} needs round {previous_round(key)} first: it is missing or did not finish "
                         f"(run `prism run --round {previous_round(key)}`)")
    if not store.exists("seeds", SEED_ROUND):
        load_seeds(config.synthesis.seeds)  # a bad seed file is reported here, before anything is written
    if key != SEED_ROUND:
        for benchmark in config.synthesis.decontamination.benchmarks:  # so is a bad decontamination list
            read_benchmark_texts(benchmark.path, benchmark.field)
    run_id = str(uuid.uuid4())
    owner = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
    with store.lock_round(key, owner, run_id=run_id) as lock:
        if lock.replaced and (orphans := orphaned_vllm_engines()):
            log.warning("vLLM engine processes whose owner was killed are still running (pids %s); they hold "
                        "memory, GPU memory on a GPU, that this run's engine may need: stop them with `kill %s`",
                        ", ".join(map(str, orphans)), " ".join(map(str, orphans)))
        instance = instance or instance_for(home)
        fail_dead_runs(instance, key, store)
        defs = build_definitions(str(home))
        if not store.exists("seeds", SEED_ROUND):
            defs.resolve_job_def("seed_job").execute_in_process(instance=instance, run_config=QUIET)
        instance.add_dynamic_partitions("rounds", [key])
        tags = {STORE_TAG: store.uri}
        if config.orchestration.executor == "in_process":
            result = defs.resolve_job_def("prism_round").execute_in_process(
                partition_key=key, instance=instance, run_config=QUIET, raise_on_error=False, run_id=run_id, tags=tags)
        else:  # step processes (multiprocess) or pods (k8s) load the job by reference: its code must be importable
            run = instance.create_run_for_job(defs.resolve_job_def("prism_round"), run_id=run_id, run_config=QUIET,
                                              tags={**tags, "dagster/partition": key})
            result = execute_run(reconstructable(prism_round_job), run, instance, raise_on_error=False)
    if not result.success:
        failure = next((entry.dagster_event for entry in instance.all_logs(result.run_id, of_type=FAILURES)), None)
        error = failure.event_specific_data.error if failure else None
        while error is not None and error.cause is not None:  # the user's exception, not Dagster's wrapper
            error = error.cause
        message = error.message.strip() if error else "see the Dagster run log"
        raise PrismError(f"round {key} failed in step {failure.step_key if failure else '?'}: {message}")
    return {"round": key, "run_id": result.run_id, "seconds": step_seconds(instance, result.run_id)}


def prism_round_job():
    """The `prism_round` job of `$PRISM_HOME`'s definitions, for `reconstructable` (other processes
    load the job through this function)."""
    from prism_assets.definitions import build_definitions

    return build_definitions().resolve_job_def("prism_round")


def fail_dead_runs(instance: DagsterInstance, key: str, store: Store) -> list[str]:
    """Mark failed the unfinished `run_round` runs of round `key` on `store`; returns their run ids.

    Call it holding the round's lock: such a run held that lock for its whole life, so if it is
    still STARTED now, its process died (e.g. SIGKILL) without reporting the end.
    """
    dead = instance.get_runs(RunsFilter(job_name="prism_round", tags={"dagster/partition": key,
                                                                       STORE_TAG: store.uri},
                                        statuses=[DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                                                  DagsterRunStatus.STARTED]))
    for run in dead:
        instance.report_run_failed(run, message=f"the process running round {key} ended without finishing the "
                                                "run (killed?); a later run of the round found its lock free")
    return [run.run_id for run in dead]


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
    store = open_store(load_config(home))
    rows = []
    for key in keys:
        gens = store.read("generations", key)
        rows.append({
            "round": key,
            "problems": gens.filter(kind="problem").height,
            "solutions": gens.filter(kind="solution").height,
            "verified": store.read("verified_samples", key).height,
            "kept": int(store.read("selection", key)["kept"].sum()),
            "pool": store.read("pool", key).height,
            "gvendi": round(pool_gvendi(store, key), 3),
        })
    return pl.DataFrame(rows)
