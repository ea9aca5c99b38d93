"""A round's gradient features in two shards under the multiprocess executor equal the unsharded ones.

`prism run --round r000` (84 bundled seeds, tiny proxy) writes the round with one shard, in-process.
Then prism.yaml says `features.shards: 2` and `orchestration.executor: multiprocess`, and only
`gradient_features` of r000 is materialized again, as a rematerialization from the UI would be: by
reference, one process per step. The instance's event log says which process ran each step and
when, so the test can tell that the two shard steps really ran at the same time in two processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterEventType, DagsterInstance

from prismatic.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
features:
  proxy: {proxy}
  dim: 64
  batch_tokens: 1024
  shards: {shards}
orchestration:
  executor: {executor}
  max_concurrent: 2
metrics:
  names: [gvendi]
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


def prism(home: Path, *args: str) -> str:
    env = dict(os.environ, PRISM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout.strip().splitlines()[-1]


def step_spans(home: Path, run_id: str) -> dict[str, tuple[float, float, int]]:
    """step key → (launch time, end time, pid) from the instance's event log.

    Launch is when the executor started the step's worker process (STEP_WORKER_STARTING, or
    STEP_START in-process): a step process spends seconds importing before STEP_START, longer
    than a tiny model's shard takes, so STEP_START times alone need not overlap.
    """
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    spans: dict[str, list] = {}
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            span = spans.setdefault(event.step_key, [None, None, None])
            if event.event_type == DagsterEventType.STEP_WORKER_STARTING:
                span[0] = entry.timestamp
            elif event.event_type == DagsterEventType.STEP_START:
                span[0] = span[0] if span[0] is not None else entry.timestamp
                span[2] = event.pid
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                span[1] = entry.timestamp
    return {key: tuple(value) for key, value in spans.items()}


@pytest.mark.slow
def test_two_shards_in_two_processes_give_the_unsharded_features(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(CONFIG.format(proxy=tiny_model_dir, shards=1, executor="in_process"))
    prism(home, "-m", "prism_cli.main", "run", "--round", "r000", "--json")
    store = open_store(home / "store")
    a = store.read("gradient_features", "r000")
    assert store.read_metadata("gradient_features", "r000")["shards"] == 1

    (home / "prism.yaml").write_text(CONFIG.format(proxy=tiny_model_dir, shards=2, executor="multiprocess"))
    run = json.loads(prism(home, "-c", REMATERIALIZE))
    assert run["success"]
    b = store.read("gradient_features", "r000")
    assert store.read_metadata("gradient_features", "r000")["run_id"] == run["run_id"]
    assert store.read_metadata("gradient_features", "r000")["shards"] == 2
    assert a.height == b.height == 84
    assert a["id"].to_list() == b["id"].to_list() == store.read("verified_samples", "r000")["id"].to_list()
    assert np.array_equal(a["feature"].to_numpy(), b["feature"].to_numpy())  # bit for bit
    assert a.drop("feature").equals(b.drop("feature"))

    spans = step_spans(home, run["run_id"])
    shard_steps = sorted(key for key in spans if key.startswith("gradient_features.feature_shard["))
    assert shard_steps == ["gradient_features.feature_shard[shard_000]",
                           "gradient_features.feature_shard[shard_001]"]
    (start0, end0, pid0), (start1, end1, pid1) = (spans[key] for key in shard_steps)
    assert pid0 != pid1 and os.getpid() not in (pid0, pid1)  # two step processes
    assert start0 < end1 and start1 < end0  # launched while the other was still running
    merge = spans["gradient_features.merge_feature_shards"]
    assert merge[0] >= max(end0, end1)
