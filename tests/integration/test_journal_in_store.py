"""Rounds on an S3 store (moto's server on 127.0.0.1; only AWS itself is replaced): what a round costs in
S3 requests, and a generation killed mid-round resumed from an empty `$PRISM_HOME`.

Each round is the real `prism run --store s3://…` in its own process, with the tiny proxy and the
deterministic OpenAI-compatible server of `fake_llm` as the generator, which records the seed of every
request it answers (a request's seed is the low 31 bits of its key's first 8 hex digits). Requests to
S3 are counted in moto's access log: every HTTP request the server answered, from boto3, s3fs (DuckDB's
catalog) and dagster-aws alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from fake_llm import ROUND_CONFIG, DeterministicServer
from moto_server import by_method, log_lines, moto_server, requests_in_log

from prismatic.storage.factory import open_store

REPO = Path(__file__).resolve().parents[2]
BUCKET = "prism-journal"
URI = f"s3://{BUCKET}/runs"
FLUSH_EVERY = 4
KILL_AT = 6
"""r001 is killed when its 6th response is journaled: 4 of them flushed to a segment, 2 in the local file only."""
SEED_ROUND_BUDGET = 150
"""S3 requests a seed round may make (issue #22; 688 before the run cache: benchmarks/results/measurements.md)."""


def seed_of(key: str) -> int:
    return int(key[:8], 16) & 0x7FFFFFFF


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """(moto's log, the generator server, the prism.yaml text) for the rounds of this module."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = DeterministicServer()
    try:
        with moto_server(log, BUCKET):
            config = ROUND_CONFIG.format(proxy=tiny_model_dir, url=server.url).replace(
                "generator:\n", f"generator:\n  journal_flush_responses: {FLUSH_EVERY}\n  journal_flush_s: 3600\n")
            yield log, server, config
    finally:
        server.close()


def make_home(path: Path, config: str) -> Path:
    path.mkdir(parents=True)
    (path / "prism.yaml").write_text(config)
    return path


def prism(home: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PRISM_HOME=str(home), TOKENIZERS_PARALLELISM="false", PRISM_FAULT_POINT=fault,
               PRISM_TEST_API_KEY="sk-journal-test")
    return subprocess.run([sys.executable, "-m", "prism_cli.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def seed_round(stack, tmp_path_factory):
    """r000 run into the bucket; returns the S3 requests it made (method, path)."""
    log, _, config = stack
    home = make_home(tmp_path_factory.mktemp("r000") / "home", config)
    start = log_lines(log)
    done = prism(home, "run", "--round", "r000", "--store", URI)
    assert done.returncode == 0, done.stderr[-3000:]
    return requests_in_log(log, start)


def test_a_seed_round_on_s3_makes_at_most_150_requests(seed_round):
    counts = by_method(seed_round)
    print(f"seed round r000 on S3: {len(seed_round)} requests {counts}")
    assert len(seed_round) <= SEED_ROUND_BUDGET, counts
    store = open_store(URI)
    puts = [path for method, path in seed_round if method == "PUT"]
    # One PUT per table written, one for the round atlas, the lock's conditional create, and its heartbeats
    # (every lease/4 = 75 s).
    assert sorted(p for p in puts if "/_locks/" not in p and "/_reports/" not in p) == sorted(
        f"/{BUCKET}/runs/{table}/round=r000/part-0.parquet" for table in store.tables())
    assert [p for p in puts if "/_reports/" in p] == [f"/{BUCKET}/runs/_reports/round=r000/atlas.html"]
    assert len(store.tables()) == 10


def segment_keys() -> list[list[str]]:
    """The request keys in each journal segment of r001's generations, oldest segment first."""
    client = boto3.client("s3")
    found = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/_journal/r001/generations/").get("Contents", [])
    return [[json.loads(line)["key"] for line in client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
             .decode().splitlines()] for item in sorted(found, key=lambda item: item["Key"])]


def test_a_generation_killed_mid_round_resumes_from_an_empty_home(stack, seed_round, tmp_path):
    log, server, config = stack
    pod_a, pod_b = make_home(tmp_path / "pod-a", config), make_home(tmp_path / "pod-b", config)

    sent_before = len(server.answered)
    killed = prism(pod_a, "run", "--round", "r001", "--store", URI, fault=f"journal.append@{KILL_AT}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    local = [json.loads(line)["key"] for line in (pod_a / "journal" / "r001.jsonl").read_text().splitlines()]
    flushed = [key for keys in segment_keys() for key in keys]
    # One segment of the first 4 (or 5, when two responses came in one batch); the rest only on pod A's disk.
    assert len(local) >= KILL_AT and flushed == local[:len(flushed)] and 0 < len(local) - len(flushed) < FLUSH_EVERY
    sent_by_a = server.answered[sent_before:]

    # The retry runs in a fresh home ("another pod"): no local journal, only the store's segments.
    sent_before, start = len(server.answered), log_lines(log)
    resumed = prism(pod_b, "run", "--round", "r001", "--store", URI)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    sent_by_b = server.answered[sent_before:]
    requests = requests_in_log(log, start)
    print(f"r001 resumed on S3: {len(requests)} requests {by_method(requests)}; generator requests: "
          f"{len(sent_by_a)} before the kill, {len(sent_by_b)} after")

    journaled = [key for keys in segment_keys() for key in keys]
    assert len(journaled) == len(set(journaled)) == 3 * 2 + 3 * 2 * 3  # problems, solutions: each once
    flushed_seeds = {seed_of(key) for key in flushed}
    unflushed_seeds = {seed_of(key) for key in local[len(flushed):]}
    assert not flushed_seeds & set(sent_by_b)  # nothing flushed was sent again
    assert unflushed_seeds <= set(sent_by_b)  # what only pod A's disk held was
    assert sorted(sent_by_b) == sorted(seed_of(key) for key in journaled if key not in flushed)  # each once
    store = open_store(URI)
    generations = store.read("generations", "r001")
    assert generations["id"].n_unique() == generations.height > 0
    meta = store.read_metadata("generations", "r001")
    assert meta["run_id"] and store.rounds("pool") == ["r000", "r001"]
