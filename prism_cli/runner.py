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
that round (which can take the lock only because the killed one no longer holds it) marks it failed.
A killed run's vLLM engine dies with it (`prismatic.generation.engines.reaper`); should one be left
anyway (its reaper was killed too), the next run names it and prints the `kill` command.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter, reconstructable
from dagster._core.execution.api import execute_run

from prism_assets.automation.instance import ensure_instance_settings
from prism_assets.automation.jobs import REPORT_ASSETS, ROUND_ASSETS, STUDENT_ASSETS
from prismatic.config_file import CONFIG_FILE
from prismatic.data.filters import FILTER_REASONS
from prismatic.data.quality import REASONS, read_benchmark_texts
from prismatic.data.samples import load_seeds
from prismatic.errors import PrismError
from prismatic.generation.engines.vllm import orphaned_vllm_engines
from prismatic.ray_connect import check_head
from prismatic.rounds import SEED_ROUND, previous_round
from prismatic.storage.base import Store
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store
from prismatic.synthesis.steps import pool_gvendi
from resources.home import home_config

log = logging.getLogger(__name__)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Console logging of in-process runs: warnings and errors only (the full log is in the instance)."""
FAILURES = {DagsterEventType.STEP_FAILURE}
"""The events whose error `run_round` reports when a run fails."""
STORE_TAG = "prism/store"
"""Tag of runs started by `run_round`: the store root they write (their lock is that store's)."""


def instance_for(home: Path) -> DagsterInstance:
    """The persistent Dagster instance under `<home>/dagster` (storage: prism.yaml's `orchestration`)."""
    dagster_home = ensure_instance_settings(home / "dagster", home_config(home).orchestration).parent
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return DagsterInstance.get()


def run_round(home: Path, key: str, instance: DagsterInstance | None = None,
              progress: Callable[[str, float], None] | None = None, store_uri: str | None = None) -> dict:
    """Materialize every asset of round `key` in one in-process run; returns per-asset seconds.

    progress: called with (asset, seconds) as each asset of the round finishes (`watch_assets`).
    store_uri: the store (`--store`); None: the home's `store_uri`. It reaches every step, in this
      process or another, through the run's resource config (`store_config`).
    """
    from prism_assets.definitions import build_definitions

    os.environ["PRISM_HOME"] = str(home)  # step processes and pods build the definitions of this home
    config = home_config(home)
    store = open_store(store_uri or config.store_uri, s3=config.s3)
    if key != SEED_ROUND and not store.exists("diversity_scores", previous_round(key)):
        raise PrismError(f"round {key} needs round {previous_round(key)} first: it is missing or did not finish "
                         f"(run `prism run --round {previous_round(key)}`)")
    if not store.exists("seeds", SEED_ROUND):
        load_seeds(config.synthesis.seeds)  # a bad seed file is reported here, before anything is written
    if key != SEED_ROUND:
        for benchmark in config.synthesis.decontamination.benchmarks:  # so is a bad decontamination list
            read_benchmark_texts(benchmark.path, benchmark.field)
    if config.student.enabled:  # and a bad evaluation set of the student
        check_student(config)
    if config.orchestration.executor == "ray":  # and a Ray head that cannot be reached
        check_head(config.orchestration.ray, home / CONFIG_FILE)
    run_id = str(uuid.uuid4())
    owner = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
    with store.lock_round(key, owner, run_id=run_id) as lock:
        if lock.replaced and (orphans := orphaned_vllm_engines()):
            log.warning("vLLM engine processes whose owner was killed are still running (pids %s); they hold "
                        "memory, GPU memory on a GPU, that this run's engine may need: stop them with `kill %s`",
                        ", ".join(map(str, orphans)), " ".join(map(str, orphans)))
        instance = instance or instance_for(home)
        fail_dead_runs(instance, key, store)
        defs = build_definitions(str(home), store_uri)
        run_config = {**QUIET, **store_config(store.uri)}
        if not store.exists("seeds", SEED_ROUND):
            defs.resolve_job_def("seed_job").execute_in_process(instance=instance, run_config=run_config)
        instance.add_dynamic_partitions("rounds", [key])
        tags = {STORE_TAG: store.uri}
        with watch_assets(instance, run_id, progress):
            if config.orchestration.executor == "in_process":
                result = defs.resolve_job_def("prism_round").execute_in_process(
                    partition_key=key, instance=instance, run_config=run_config, raise_on_error=False,
                    run_id=run_id, tags=tags)
            else:  # step processes (multiprocess) or pods (k8s) load the job by reference: its code must be importable
                run = instance.create_run_for_job(defs.resolve_job_def("prism_round"), run_id=run_id,
                                                  run_config=run_config, tags={**tags, "dagster/partition": key})
                result = execute_run(reconstructable(prism_round_job), run, instance, raise_on_error=False)
    if not result.success:
        failure = next((entry.dagster_event for entry in instance.all_logs(result.run_id, of_type=FAILURES)), None)
        error = failure.event_specific_data.error if failure else None
        while error is not None and error.cause is not None:  # the user's exception, not Dagster's wrapper
            error = error.cause
        message = error.message.strip() if error else "see the Dagster run log"
        raise PrismError(f"round {key} failed in step {failure.step_key if failure else '?'}: {message}")
    return {"round": key, "run_id": result.run_id, "seconds": step_seconds(instance, result.run_id)}


def check_student(config) -> None:
    """Refuse a round whose student cannot run, before anything is written: no evaluation set, or a bad
    one (`load_eval_set` names file, line and field)."""
    from prismatic.student.sets import load_eval_set

    if not config.student.eval_sets:
        raise PrismError("student.enabled needs at least one entry in student.eval_sets (prism.yaml)")
    for spec in config.student.eval_sets:
        load_eval_set(spec)


def store_config(uri: str) -> dict:
    """Run config that points the `store` resource at `uri`. Dagster ships a run's config to every
    step, so step processes and pods (which build the definitions again, without `--store`) write
    the same store as the run."""
    return {"resources": {"store": {"config": {"uri": uri}}}}


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


@contextmanager
def watch_assets(instance: DagsterInstance, run_id: str, progress: Callable[[str, float], None] | None,
                 interval_s: float = 0.5) -> Iterator[None]:
    """While the body runs, report each asset of run `run_id` that finishes: `progress(asset, seconds)`,
    seconds from its first step's start to its last step's success (a graph asset's steps are
    `asset.op`; it is reported once its last step is done). Polls the instance's event log; every
    asset is reported, in order, by the time the body returns."""
    if progress is None:
        yield
        return
    reported: set[str] = set()
    stop = threading.Event()

    def report() -> None:
        done = asset_seconds(instance, run_id)
        for asset, seconds in done.items():
            if asset not in reported:
                reported.add(asset)
                progress(asset, seconds)

    def poll() -> None:
        while not stop.wait(interval_s):
            try:
                report()
            except Exception:  # a transient storage error: try again at the next tick
                log.debug("event poll failed", exc_info=True)

    thread = threading.Thread(target=poll, name="prism-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report()


FINAL_STEPS = {"gradient_features": "gradient_features.merge_feature_shards"}
"""The step that ends a multi-op asset (other assets are one step named like the asset)."""


def asset_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds per finished asset of a run (`ROUND_ASSETS`, `STUDENT_ASSETS`, `REPORT_ASSETS`; asset checks are left
    out), in finishing order: from the first STEP_START of the asset's steps to the STEP_SUCCESS of its final step
    (`FINAL_STEPS`, else the step named like the asset)."""
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        asset = event.step_key.split(".", 1)[0]
        if asset not in (*ROUND_ASSETS, *STUDENT_ASSETS, *REPORT_ASSETS):  # an asset check's step
            continue
        if event.event_type == DagsterEventType.STEP_START:
            started.setdefault(asset, entry.timestamp)
        elif event.step_key == FINAL_STEPS.get(asset, asset):
            ended[asset] = entry.timestamp
    return {a: round(ended[a] - started[a], 2) for a in sorted(ended, key=ended.get) if a in started}


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


SCREENING_REASONS = (*FILTER_REASONS, *REASONS)
"""Why parsed problems were dropped before solving (prismatic.data.filters, prismatic.data.quality)."""


def round_summary(home: Path, keys: list[str], store_uri: str | None = None) -> list[dict]:
    """Per round, what `prism demo` and `prism run` show:

    problems: problems parsed from the generator's answers; dropped: of those, removed before solving
    (filters, proxy-NLL outliers, duplicates, contamination), with `dropped_by` counting each reason
    (plus `unparseable`: answers with no problem at all); solved: problems sent to solving; verified:
    verified samples (solutions in a problem's winning answer group); kept: candidates the selection
    kept; pool: pool size after the round; gvendi: the pool's G-Vendi; gain: its change from the previous round;
    control_gain: the change had the same number of candidates been kept at random
    (`gvendi_control`, mean of `synthesis.control_draws` seeded draws); tokens: prompt + completion
    tokens of the round's generation requests, and cost_usd their cost under `generator.prices` (the
    `usage` the generations file records; null for rounds written without it). store_uri: as in `run_round`.
    """
    config = home_config(home)
    store = open_store(store_uri or config.store_uri, s3=config.s3)
    rows = []
    previous = None
    for key in keys:
        gens = store.read("generations", key)
        rejections = store.read("rejections", key)
        counts = rejections.group_by("reason").len().sort("len", descending=True)
        dropped_by = {r: n for r, n in counts.iter_rows() if r in SCREENING_REASONS}
        scores = dict(store.read("diversity_scores", key).select("metric", "value").iter_rows())
        usage = store.read_metadata("generations", key).get("usage") or {}
        if previous is None and key != SEED_ROUND:
            previous = pool_gvendi(store, previous_round(key))
        rows.append({
            "round": key,
            "problems": gens.filter(kind="problem").height,
            "unparseable": rejections.filter(reason="unparseable_problems").height,
            "dropped": sum(dropped_by.values()),
            "dropped_by": dropped_by,
            "solved": gens.filter(kind="solution")["parent_ids"].list.first().n_unique(),
            "verified": store.read("verified_samples", key).height,
            "kept": int(store.read("selection", key)["kept"].sum()),
            "pool": read_as_of(store, "pool", key, columns=["id"]).height,
            "gvendi": round(scores["gvendi"], 3),
            "gain": None if previous is None else round(scores["gvendi"] - previous, 3),
            "control_gain": (round(scores["gvendi_control"] - previous, 3)
                             if previous is not None and "gvendi_control" in scores else None),
            "tokens": usage.get("total_tokens"),
            "cost_usd": usage.get("cost_usd"),
        })
        previous = scores["gvendi"]
    return rows


def format_summary(rows: list[dict]) -> list[str]:
    """`round_summary` rows as a fixed-width table (a cost column only when some round has a cost), then one
    line per round naming why problems were dropped."""
    priced = any(row.get("cost_usd") is not None for row in rows)
    columns = ("round", "problems", "dropped", "solved", "verified", "kept", "pool", "gvendi", "gain",
               "control_gain", "tokens", *(("cost_usd",) if priced else ()))
    def cell(column: str, value) -> str:
        if value is None:
            return "—"
        if column == "cost_usd":
            return f"{value:.4f}"
        return f"{value:+.3f}" if column.endswith("gain") else f"{value:.3f}" if column == "gvendi" else str(value)

    cells = [[cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(cell[i]) for cell in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(cell_row, widths)) for cell_row in cells]
    for row in rows:
        reasons = dict(sorted(row["dropped_by"].items()),  # by name: the same line for the same counts
                       **({"unparseable": row["unparseable"]} if row["unparseable"] else {}))
        if reasons:
            lines.append(f"{row['round']} dropped: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    return lines
