"""Gradient-feature shards and generation replicas on a real Ray cluster: a head and two worker nodes,
each its own `ray start` process on this machine (tests/ray_cluster.py: head without CPUs or dashboard,
workers `--num-cpus 1` named worker-1 and worker-2), started once for the module; a worker node that a
test killed is started again before the next test.

`prism run --round r000` (84 bundled seeds, tiny proxy) with `orchestration.executor: ray` and
`features.shards: 2` runs one shard on each worker node, and the merged features equal those of the
unsharded in-process computation bit for bit. Then a worker node is SIGKILLed while its shard runs:
Ray starts that shard's actor again on the other node and the round finishes with the same features.

To kill a node at a chosen moment rather than a timer's, the shards' runtime environment sets the
fault point `features` with SIGSTOP (prismatic/faults.py): each shard actor stops itself once its
proxy is loaded, just before it computes. The test waits until both are stopped, kills worker-1's
whole process group, and continues every stopped shard actor on worker-2 until the round ends. Every
cluster and `prism` process is killed at the end, however the test ends.

Generation: two tiny vLLM replicas (Ray actors, one per node) answer 16 requests from both nodes; then
worker-1 is SIGKILLed and, once Ray has seen its node die, 24 more are sent: the dead replica's chunk
fails over to the survivor, every request is answered and journaled exactly once, and a rerun is
answered from the journal without a request.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from cpu_hog import cpu_hog
from ray_cluster import RayNode, local_ray_cluster

from prismatic.config import FeaturesConfig, RayConfig
from prismatic.generation.engines.ray_replicas import RayReplicaEngine
from prismatic.generation.engines.vllm import VLLMEngine
from prismatic.generation.journal import Journal, generate_journaled
from prismatic.generation.requests import GenerationRequest, Sampling
from prismatic.gradients.featureset import FeatureSet
from prismatic.gradients.proxy import compute_features
from prismatic.storage.factory import open_store

pytestmark = pytest.mark.scaleout

REPO = Path(__file__).resolve().parents[2]
FEATURES = {"dim": 64, "batch_tokens": 1024}
CONFIG = """
features: {{proxy: {proxy}, dim: 64, batch_tokens: 1024, shards: 2}}
metrics: {{names: [gvendi]}}
orchestration:
  executor: ray
  ray:
    address: "{address}"
    runtime_env: {runtime_env}
"""
STOP_AT_FEATURES = {"env_vars": {"PRISM_FAULT_POINT": "features", "PRISM_FAULT_SIGNAL": "STOP"}}


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray_cluster(workers=2) as started:
        yield started


@pytest.fixture
def cluster(ray_cluster):
    """The module's cluster with both worker nodes up (a node an earlier test killed is started again)."""
    ray_cluster.restart_dead_workers()
    return ray_cluster


@pytest.fixture
def busy():
    """Two busy processes beside the test (tests/cpu_hog.py): a lost node must be survived on a busy machine,
    where Ray takes longer to declare a node dead."""
    with cpu_hog(2):
        yield


@pytest.fixture
def watcher(cluster):
    """This test process joined to the cluster, to read Ray's view of its nodes."""
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def alive(name: str) -> bool:
    """Whether Ray counts the node `name` alive."""
    return any(node["Alive"] for node in ray.nodes() if node.get("NodeName") == name)


def report_declared_dead(name: str, killed_at: float, timeout: float = 120) -> float:
    """Seconds from the kill of node `name` until Ray declares it dead (printed for the record)."""
    while alive(name):
        assert time.monotonic() - killed_at < timeout, f"Ray still counts {name} alive {timeout} s after its kill"
        time.sleep(0.1)
    seconds = time.monotonic() - killed_at
    print(f"\nRay declared {name} dead {seconds:.1f} s after its kill (load average {os.getloadavg()[0]:.1f})")
    return seconds


def make_home(tmp_path: Path, proxy: Path, address: str, runtime_env: dict | None = None, deadline_s: float = 300
              ) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    config = CONFIG.format(proxy=proxy, address=address, runtime_env=runtime_env or {})
    (home / "prism.yaml").write_text(config + f"    retry_deadline_s: {deadline_s}\n")
    return home


def start_round(home: Path) -> subprocess.Popen:
    """`prism run --round r000` in its own session, its output in `home/run.log`."""
    env = dict(os.environ, PRISM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), TOKENIZERS_PARALLELISM="false")
    env.pop("RAY_ADDRESS", None)
    with (home / "run.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "prism_cli.main", "run", "--round", "r000", "--json"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, home: Path, timeout: float = 900) -> tuple[int, str]:
    """The run's exit code and the end of its output; its process group is killed if it is still running."""
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, (home / "run.log").read_text()[-4000:]


def in_process_features(store, proxy: Path) -> FeatureSet:
    """The round's verified samples featurized unsharded in this process: the reference."""
    samples = store.read("verified_samples", "r000")
    result, _ = compute_features(samples, FeaturesConfig(proxy=str(proxy), **FEATURES), proxy.parent, progress=False)
    return result


def assert_same_features(store, proxy: Path) -> list[dict]:
    """The stored features equal the in-process ones bit for bit; returns where each shard ran."""
    stored = store.read("gradient_features", "r000")
    reference = in_process_features(store, proxy)
    assert stored.height == len(reference.ids) == 84
    assert stored["id"].to_list() == reference.ids
    assert np.array_equal(np.asarray(stored["feature"].to_numpy(), dtype=np.float32), reference.features)
    assert stored["n_tokens"].to_list() == reference.n_tokens
    metadata = store.read_metadata("gradient_features", "r000")
    assert metadata["shards"] == 2
    nodes = metadata["shard_nodes"]
    assert [node["shard"] for node in nodes] == [0, 1]
    assert sum(node["samples"] for node in nodes) == 84 and all(node["samples"] > 0 for node in nodes)
    return nodes


def test_two_shards_on_two_worker_nodes_equal_the_in_process_features(cluster, tiny_model_dir, tmp_path):
    home = make_home(tmp_path, tiny_model_dir, cluster.address)
    code, output = finish(start_round(home), home)
    assert code == 0, output
    nodes = assert_same_features(open_store(home / "store"), tiny_model_dir)
    assert sorted(node["node_name"] for node in nodes) == ["worker-1", "worker-2"]  # one shard on each node
    assert len({node["node_id"] for node in nodes}) == 2
    assert not any(node["restarted"] for node in nodes)


def stopped_shard_actors(node: RayNode) -> list[int]:
    """Pids of this node's shard actors that stopped themselves at the `features` fault point."""
    pids = []
    for pid in node.session_pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if title.startswith("ray::ShardWorker") and state == "T":
            pids.append(pid)
    return pids


def wait_until_both_shards_stopped(cluster, process: subprocess.Popen, home: Path, deadline: float) -> None:
    """Until each worker node holds a shard actor stopped at the `features` fault point (both mid-shard)."""
    while not all(stopped_shard_actors(node) for node in cluster.workers):
        assert process.poll() is None, (home / "run.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the two shard actors never reached the features fault point"
        time.sleep(0.2)


def test_a_worker_node_killed_mid_shard_is_survived_on_a_busy_machine(cluster, busy, watcher, tiny_model_dir,
                                                                      tmp_path):
    doomed, survivor = cluster.workers
    home = make_home(tmp_path, tiny_model_dir, cluster.address, STOP_AT_FEATURES)
    process = start_round(home)
    try:
        deadline = time.monotonic() + 600
        wait_until_both_shards_stopped(cluster, process, home, deadline)
        doomed.kill()
        killed_at, declared_dead = time.monotonic(), None
        assert not doomed.alive() and survivor.alive()
        # Continue the survivor's shard, then the lost one placed again there. Nothing waits for Ray to declare
        # the node dead: the retry must find the live node while Ray may still count the dead one alive.
        while process.poll() is None:
            for pid in stopped_shard_actors(survivor):
                os.kill(pid, signal.SIGCONT)
            if declared_dead is None and not alive(doomed.name):
                declared_dead = time.monotonic() - killed_at
            assert time.monotonic() < deadline, "the round did not finish after the node was killed"
            time.sleep(0.2)
    finally:
        code, output = finish(process, home, timeout=60)
    assert code == 0, output
    nodes = assert_same_features(open_store(home / "store"), tiny_model_dir)
    assert [node["node_name"] for node in nodes] == ["worker-2", "worker-2"]
    assert sorted((node["restarted"], node["attempt"]) for node in nodes) == [(False, 0), (True, 1)]
    if declared_dead is None:
        report_declared_dead(doomed.name, killed_at)
    else:
        print(f"\nRay declared {doomed.name} dead {declared_dead:.1f} s after its kill "
              f"(load average {os.getloadavg()[0]:.1f})")


def test_a_shard_lost_with_every_node_fails_the_round_at_the_deadline_in_one_line(cluster, watcher, tiny_model_dir,
                                                                                 tmp_path):
    """No CPU hog here (the two node-kill tests have it): this test also prints how long Ray takes to declare a
    killed node dead on a machine the suite alone loads."""
    home = make_home(tmp_path, tiny_model_dir, cluster.address, STOP_AT_FEATURES, deadline_s=5)
    process = start_round(home)
    try:
        wait_until_both_shards_stopped(cluster, process, home, time.monotonic() + 600)
        for node in cluster.workers:
            node.kill()
        killed_at = time.monotonic()
        for node in cluster.workers:
            report_declared_dead(node.name, killed_at)
    finally:
        code, output = finish(process, home, timeout=300)
    assert code != 0
    lines = [line for line in output.splitlines() if "orchestration.ray.retry_deadline_s" in line]
    assert lines, output
    line = lines[-1]  # which shard, the nodes tried, what Ray reported
    assert "feature shard" in line and " of 2 was lost " in line and "within 5 s" in line, line
    assert "nodes tried: worker-" in line and "Ray reported: " in line, line
    assert not (home / "store" / "gradient_features").exists()  # nothing half-written


def generation_requests(first: int, count: int) -> list[GenerationRequest]:
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=16, seed=0)
    return [GenerationRequest.build("tiny", [{"role": "user", "content": f"Count to ten, number {i}."}],
                                    sampling, i) for i in range(first, first + count)]


def journal_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def test_generation_on_one_vllm_replica_per_node_loses_nothing_and_sends_nothing_twice(cluster, busy, tiny_model_dir,
                                                                                       tmp_path):
    # Eager mode: torch.compile's warm-up (~30 s a replica on two cores) tests nothing here.
    build = functools.partial(VLLMEngine, str(tiny_model_dir), max_model_len=2048, enforce_eager=True,
                              enable_chunked_prefill=False)
    engine = RayReplicaEngine(build, RayConfig(address=cluster.address, generation_replicas=2,
                                               runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}),
                              tmp_path / "prism.yaml")
    try:
        first = generation_requests(0, 16)
        journal = Journal(tmp_path / "a.jsonl")
        texts = generate_journaled(engine, first, journal)
        assert sorted(journal_keys(journal.path)) == sorted(r.key for r in first)
        assert texts == [journal[r.key] for r in first]
        assert len(engine.served) == 2 and sum(engine.served.values()) == 16  # both nodes' replicas answered

        # Lose a node between two generations and send at once, while Ray may still count the node alive: the
        # chunk handed to its replica fails, the replica is dropped, its chunk goes to the survivor, and no
        # replacement is placed on the dead node.
        doomed, survivor = cluster.workers
        served_before = dict(engine.served)
        doomed.kill()
        killed_at = time.monotonic()
        second = generation_requests(100, 24)
        journal = Journal(tmp_path / "b.jsonl")
        texts = generate_journaled(engine, second, journal)
        assert engine.lost_replicas == 1 and not doomed.alive()
        assert sorted(journal_keys(journal.path)) == sorted(r.key for r in second)  # nothing lost, each once
        assert texts == [journal[r.key] for r in second]
        assert engine.completed >= 16 + 24
        survivor_id = next(node["NodeID"] for node in ray.nodes() if node.get("NodeName") == survivor.name)
        grown = {node: count - served_before.get(node, 0) for node, count in engine.served.items()
                 if count != served_before.get(node, 0)}
        assert grown == {survivor_id: 24}  # every request of the second batch was answered on the live node
        report_declared_dead(doomed.name, killed_at)

        completed = engine.completed  # a rerun of both is answered from the journals: nothing is sent
        assert generate_journaled(engine, second, Journal(tmp_path / "b.jsonl")) == texts
        assert engine.completed == completed
    finally:
        engine.close()
    assert not ray.is_initialized()
