"""What a feature shard costs on a Ray cluster against the multiprocess executor, on the same round.

Round r000 (84 bundled seeds) is run once in-process with one shard; then its `gradient_features`
is rematerialized (`execute_job` of `prism_round_job`, as `tests/integration/test_sharded_round.py`
does) with `features.shards: 2`, alternately under `orchestration.executor: multiprocess`
(`max_concurrent: 2`: plan, two shard and merge steps, one process each) and `executor: ray` against
a local cluster of a head and two one-CPU worker nodes (tests/ray_cluster.py; two ops in the run's
process, one actor per shard). Reported per executor, medians over `--repeats`:

- asset_s: wall seconds of the asset, from its first step's launch to its last step's success
  (Dagster's event log);
- compute_s: the shards' feature compute seconds summed (the table's `seconds` fact);
- overhead_per_shard_s = asset_s − compute_s / shards: the asset's wall above an ideal split of its
  compute over shards running side by side, i.e. what each shard pays for running elsewhere (step
  process or actor start, imports, proxy load, moving samples and features);
- run_s: wall of the whole rematerialization process (Python and Dagster start included);
- for Ray, each shard's proxy-load and compute seconds on its worker (`shard_nodes`).

Also the cluster's start time (head, then the workers one after another, until each `ray start`
reports it started). Every repeat's features are checked equal to the in-process run's.

    python -m benchmarks.ray_overhead [--repeats 3] [--proxy tiny|<models dir name or path>] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dagster import DagsterEventType, DagsterInstance

from benchmarks.common import emit, machine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from ray_cluster import local_ray_cluster  # noqa: E402 (a test helper, shared with tests/integration/test_ray_cluster.py)

CONFIG = """
features: {{proxy: {proxy}, dim: 64, batch_tokens: 1024, shards: {shards}}}
orchestration:
  executor: {executor}
  max_concurrent: 2
  ray: {{address: "{address}"}}
metrics: {{names: [gvendi]}}
"""
REMATERIALIZE = """
import json
from dagster import AssetKey, DagsterInstance, execute_job, reconstructable
from prism_cli.runner import prism_round_job
with DagsterInstance.get() as instance:
    result = execute_job(reconstructable(prism_round_job), instance, tags={"dagster/partition": "r000"},
                         asset_selection=[AssetKey("gradient_features")])
    print(json.dumps({"success": result.success, "run_id": result.run_id}))
"""


def run(home: Path, *args: str) -> tuple[str, float]:
    """Last stdout line of `python *args` with this home, and its wall seconds."""
    env = dict(os.environ, PRISM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise RuntimeError(result.stderr[-4000:])
    return result.stdout.strip().splitlines()[-1], time.perf_counter() - started


def asset_seconds(home: Path, run_id: str) -> float:
    """From the first gradient_features step's launch to its last step's success."""
    starts, ends = [], []
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or not (event.step_key or "").startswith("gradient_features"):
                continue
            if event.event_type in (DagsterEventType.STEP_WORKER_STARTING, DagsterEventType.STEP_START):
                starts.append(entry.timestamp)
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                ends.append(entry.timestamp)
    return max(ends) - min(starts)


def measure(home: Path, store, reference: np.ndarray) -> dict:
    line, run_s = run(home, "-c", REMATERIALIZE)
    outcome = json.loads(line)
    assert outcome["success"], outcome
    provenance = store.read_metadata("gradient_features", "r000")
    assert provenance["run_id"] == outcome["run_id"]
    features = np.asarray(store.read("gradient_features", "r000")["feature"].to_numpy(), dtype=np.float32)
    assert np.array_equal(features, reference), "sharded features differ from the in-process ones"
    asset_s = asset_seconds(home, outcome["run_id"])
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        materialization = next(entry.asset_materialization for entry in instance.all_logs(
            outcome["run_id"], of_type=DagsterEventType.ASSET_MATERIALIZATION))
    compute_s = float(materialization.metadata["seconds"].value)
    shards = int(provenance["shards"])
    row = {"run_s": round(run_s, 2), "asset_s": round(asset_s, 2), "compute_s": round(compute_s, 2),
           "overhead_per_shard_s": round(asset_s - compute_s / shards, 2)}
    if "shard_nodes" in provenance:
        row["shard_nodes"] = [{key: node[key] for key in ("shard", "node_name", "samples", "load_s", "compute_s")}
                              for node in provenance["shard_nodes"]]
    return row


def summary(rows: list[dict]) -> dict:
    return {key: round(statistics.median(row[key] for row in rows), 2)
            for key in ("run_s", "asset_s", "compute_s", "overhead_per_shard_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proxy", default="tiny", help="tiny (a random 2-layer model) or a proxy of prism.yaml")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        result = measure_all(root, args.proxy, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = f"python -m benchmarks.ray_overhead --repeats {args.repeats} --proxy {args.proxy}"
    emit(result, markdown(result, command), args.json)


def measure_all(root: Path, proxy: str, repeats: int) -> dict:
    """Set up the round under `root`, start the cluster, measure both executors `repeats` times."""
    from prismatic.storage.factory import open_store

    name = proxy
    if proxy == "tiny":
        from prismatic.models import init_model

        proxy = str(init_model("tiny", root / "models" / "tiny", seed=0))
    home = root / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(CONFIG.format(proxy=proxy, shards=1, executor="in_process", address="auto"))
    run(home, "-m", "prism_cli.main", "run", "--round", "r000", "--json")
    store = open_store(home / "store")
    reference = np.asarray(store.read("gradient_features", "r000")["feature"].to_numpy(), dtype=np.float32)

    rows: dict[str, list[dict]] = {"multiprocess": [], "ray": []}
    with local_ray_cluster(workers=2) as cluster:
        for _ in range(repeats):
            for executor in rows:  # interleaved, so drifting load hits both alike
                (home / "prism.yaml").write_text(CONFIG.format(proxy=proxy, shards=2, executor=executor,
                                                               address=cluster.address))
                rows[executor].append(measure(home, store, reference))
        start_s = cluster.start_seconds
    return {
        "benchmark": "ray_overhead", "machine": machine(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "proxy": name, "samples": len(reference), "shards": 2, "repeats": repeats,
        "cluster_start_s": round(start_s, 2), "cluster": "head (0 CPUs, no dashboard) + 2 worker nodes (1 CPU each)",
        "median": {executor: summary(found) for executor, found in rows.items()}, "runs": rows,
        "features_equal_in_process": True,
    }


def markdown(result: dict, command: str) -> str:
    lines = [f"# Ray vs multiprocess feature shards\n\n`{command}`\n", "| executor | asset s | compute s | "
             "overhead per shard s | run s |", "|---|---|---|---|---|"]
    for executor, values in result["median"].items():
        lines.append(f"| {executor} | {values['asset_s']} | {values['compute_s']} | "
                     f"{values['overhead_per_shard_s']} | {values['run_s']} |")
    lines.append(f"\nCluster start: {result['cluster_start_s']} s. Load average at the end: "
                 f"{result['load_avg_1m_at_end']}.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
