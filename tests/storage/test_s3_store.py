"""The S3 store against a real S3 endpoint: moto's server mode on 127.0.0.1, started by this module.

Everything reaches it as it would reach AWS: boto3 and s3fs clients from the standard AWS
environment (`AWS_ENDPOINT_URL`, keys, region), dagster-aws's S3Resource inside Dagster runs, DuckDB
through the s3fs filesystem the catalog registers. Only AWS itself is replaced.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from fake_llm import ROUND_CONFIG, DeterministicServer
from moto_server import moto_server

from prismatic.config import S3Config
from prismatic.errors import PrismError
from prismatic.generation.journal import Journal
from prismatic.storage.catalog import Catalog
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store
from prismatic.storage.locks import RoundLockedError
from prismatic.storage.s3 import S3Store
from prismatic.storage.schema import TABLES

BUCKET = "prism-test"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the AWS environment that points everything at it."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log", BUCKET) as env:
        yield env


@pytest.fixture
def s3(s3_env, request):
    """(client, prefix): a fresh prefix of the bucket per test."""
    return boto3.client("s3"), f"t/{request.node.name.replace('[', '-').replace(']', '')}"


def objects(client, prefix: str) -> dict[str, bytes]:
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in found}


def incomplete_uploads(client, prefix: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])]


def frame_of(table: str, rows: int = 3, dim: int = 8) -> pl.DataFrame:
    """A valid frame of `table` with `rows` rows."""
    values = {}
    for name, dtype in TABLES[table].items():
        if isinstance(dtype, pl.Array):
            values[name] = pl.Series(name, np.arange(rows * dim, dtype=np.float32).reshape(rows, dim),
                                     dtype=pl.Array(pl.Float32, dim))
        elif isinstance(dtype, pl.List):
            values[name] = pl.Series(name, [[f"p{i}"] for i in range(rows)], dtype=dtype)
        elif dtype == pl.String:
            values[name] = pl.Series(name, [f"{name}-{i}" for i in range(rows)], dtype=dtype)
        elif dtype == pl.Boolean:
            values[name] = pl.Series(name, [i % 2 == 0 for i in range(rows)], dtype=dtype)
        else:
            values[name] = pl.Series(name, list(range(rows)), dtype=dtype)
    return pl.DataFrame(values)


@pytest.mark.parametrize("table", list(TABLES))
def test_every_table_round_trips_through_s3(s3, tmp_path, table):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}")
    assert isinstance(store, S3Store) and store.uri == f"s3://{BUCKET}/{prefix}"
    frame = frame_of(table)
    where = store.write(table, "r001", frame, metadata={"round": "r001", "run_id": "abc"})
    assert where == f"s3://{BUCKET}/{prefix}/{table}/round=r001/part-0.parquet"
    assert store.read(table, "r001").equals(frame)
    assert store.read_metadata(table, "r001") == {"round": "r001", "run_id": "abc"}
    assert store.exists(table, "r001") and not store.exists(table, "r002")
    assert store.rounds(table) == ["r001"] and store.tables() == [table]
    # The same frame gives the same file, hence the same data version, in a local store.
    local = open_store(tmp_path / "store")
    local.write(table, "r001", frame, metadata={"round": "r001", "run_id": "abc"})
    body = objects(client, prefix)[f"{prefix}/{table}/round=r001/part-0.parquet"]
    assert body == local.path(table, "r001").read_bytes()
    assert store.data_version(table, "r001") == local.data_version(table, "r001")
    assert "round" not in pq.read_schema(pa.BufferReader(body)).names


def test_open_store_passes_the_settings_and_the_client_to_an_s3_store(s3, tmp_path):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}/", s3=S3Config(part_size_mb=7), client=client)
    assert isinstance(store, S3Store) and store.client is client and store.settings.part_size_mb == 7
    assert (store.bucket, store.prefix, store.uri) == (BUCKET, prefix, f"s3://{BUCKET}/{prefix}")
    assert open_store(f"s3://{BUCKET}").settings == S3Config()
    assert open_store(tmp_path / "store", s3=S3Config(), client=client).uri == str(tmp_path / "store")


def test_rounds_sort_numerically_and_rewrites_replace_the_partition(s3):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}")
    for key in ("r010", "r002", "r1000"):
        store.write("pool", key, frame_of("pool", rows=2))
    assert store.rounds("pool") == ["r002", "r010", "r1000"]
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/pool/round=r002/part-1.parquet", Body=b"stray")
    store.write("pool", "r002", frame_of("pool", rows=5))
    assert [k for k in objects(client, prefix) if "/round=r002/" in k] == [f"{prefix}/pool/round=r002/part-0.parquet"]
    assert store.read("pool", "r002").height == 5
    with pytest.raises(PrismError, match=r"table 'pool' has no round 'r003' in the store at s3://"):
        store.read("pool", "r003")


def test_a_failed_multipart_upload_leaves_no_object_and_no_upload(s3):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}", s3=S3Config(part_size_mb=5))
    big = frame_of("gradient_features", rows=3000, dim=1024)  # 12 MB of float32: three parts
    store.write("gradient_features", "r001", big)
    assert store.read("gradient_features", "r001").equals(big)
    calls = {"parts": 0}
    real_upload_part = store.client.upload_part

    def failing_upload_part(**kwargs):
        calls["parts"] += 1
        if calls["parts"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")
        return real_upload_part(**kwargs)

    store.client.upload_part = failing_upload_part
    smaller = frame_of("gradient_features", rows=2000, dim=1024)
    with pytest.raises(PrismError, match="S3 upload_part failed: InternalError"):
        store.write("gradient_features", "r001", smaller)
    assert store.read("gradient_features", "r001").equals(big)  # the old partition, whole
    assert incomplete_uploads(client, prefix) == []  # aborted


def test_a_writer_killed_between_part_uploads_leaves_nothing_visible(s3, tmp_path):
    client, prefix = s3
    script = f"""
import numpy as np, polars as pl
from prismatic.config import S3Config
from prismatic.storage.factory import open_store
store = open_store("s3://{BUCKET}/{prefix}", s3=S3Config(part_size_mb=5))
with store.lock_round("r001", "killed writer"):
    store.write("gradient_features", "r001", pl.DataFrame({{
        "id": [str(i) for i in range(3000)],
        "feature": pl.Series(np.random.default_rng(0).random((3000, 1024), dtype=np.float32),
                             dtype=pl.Array(pl.Float32, 1024)),
        "proxy": ["p"] * 3000, "mode": ["fast"] * 3000, "dim": [1024] * 3000, "n_tokens": [1] * 3000,
        "truncated": [False] * 3000}}))
"""
    env = dict(os.environ, PRISM_FAULT_POINT="store.upload_part:gradient_features")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert f"{prefix}/_locks/round=r001.json" in objects(client, prefix)  # the dead writer's lock
    assert not [k for k in objects(client, prefix) if k.endswith(".parquet")]  # no partial object
    assert incomplete_uploads(client, prefix) == [f"{prefix}/gradient_features/round=r001/part-0.parquet"]
    catalog = Catalog(tmp_path / "catalog.duckdb", open_store(f"s3://{BUCKET}/{prefix}"))
    assert catalog.refresh() == []  # no view points at the unfinished object
    # The next holder of the round (the dead pid is gone: its lock is stale) aborts the upload.
    store = open_store(f"s3://{BUCKET}/{prefix}")
    with store.lock_round("r001", "rerun") as lock:
        assert lock.replaced["owner"] == "killed writer"
        assert incomplete_uploads(client, prefix) == []
    assert f"{prefix}/_locks/round=r001.json" not in objects(client, prefix)  # released: deleted


def test_one_writer_per_round_through_the_conditional_lock_object(s3):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from prismatic.storage.factory import open_store
with open_store("s3://{BUCKET}/{prefix}").lock_round("r002", "prism run --round r002", run_id="run-1"):
    print("held", flush=True)
    time.sleep(120)
"""], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        record = json.loads(objects(client, prefix)[f"{prefix}/_locks/round=r002.json"])
        assert record["owner"] == "prism run --round r002" and record["pid"] == holder.pid
        with pytest.raises(RoundLockedError) as refused:
            store.lock_round("r002", "second run").acquire()
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "prism run --round r002" in message
        assert f"s3://{BUCKET}/{prefix}/_locks/round=r002.json" in message
        # A step process of the run that holds the lock may write; other rounds are free.
        with store.lock_round("r002", "step of run-1", run_id="run-1"):
            store.write("pool", "r002", frame_of("pool"))
        with store.lock_round("r003", "other round"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock_round("r002", "after the holder died") as lock:  # its pid is gone: stale
        assert lock.replaced["pid"] == holder.pid
        with store.lock_round("r002", "same process again"):  # re-entrant
            pass
        assert json.loads(objects(client, prefix)[f"{prefix}/_locks/round=r002.json"])["owner"] == \
            "after the holder died"


def test_a_lock_whose_heartbeat_stopped_is_stale_and_a_live_one_is_refreshed(s3):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}", s3=S3Config(lock_lease_s=2.0))
    key = f"{prefix}/_locks/round=r004.json"
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(
        {"owner": "run on another host", "pid": 1, "host": "elsewhere", "heartbeat": time.time()}).encode())
    with pytest.raises(RoundLockedError, match="run on another host"):
        store.lock_round("r004", "too early").acquire()
    time.sleep(2.2)  # no refresh for longer than the lease
    with store.lock_round("r004", "taker") as lock:
        assert lock.replaced["host"] == "elsewhere"
        first = json.loads(objects(client, prefix)[key])["heartbeat"]
        time.sleep(1.2)  # lease / 4 = 0.5 s between beats
        assert json.loads(objects(client, prefix)[key])["heartbeat"] > first
        time.sleep(1.5)  # older than the lease since taken, but refreshed: not stale
        with pytest.raises(RoundLockedError, match="taker"):
            _other_process_lock(prefix, "r004")
    assert key not in objects(client, prefix)


def _other_process_lock(prefix: str, key: str) -> None:
    """Try the lock from another process (this one holds it re-entrantly); raise what it raised."""
    result = subprocess.run([sys.executable, "-c", f"""
from prismatic.config import S3Config
from prismatic.storage.factory import open_store
from prismatic.storage.locks import RoundLockedError
try:
    open_store("s3://{BUCKET}/{prefix}", s3=S3Config(lock_lease_s=2.0)).lock_round("{key}", "other").acquire()
except RoundLockedError as exc:
    print("REFUSED", exc)
"""], cwd=REPO, capture_output=True, text=True, timeout=120)
    if "REFUSED" in result.stdout:
        raise RoundLockedError(result.stdout)


def sent_by(client) -> list[tuple[str, str, dict]]:
    """Every HTTP request `client` sends from now on, as (method, URL, headers): botocore's `before-send`
    event fires once per request that goes on the wire (retries included)."""
    sent = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append((request.method, request.url, {
        name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()})))
    return sent


def test_the_pool_views_and_reader_expand_the_deltas_on_s3(s3, tmp_path):
    """The pool's partitions hold what each round added; the `pool` view (listing the partitions through
    s3fs) and `read_as_of` give the pool as of each round, a round that added nothing included."""
    _, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}")
    catalog = Catalog(tmp_path / "catalog.duckdb", store)
    for key, rows in (("r000", 3), ("r001", 2), ("r002", 0)):
        frame = frame_of("pool", rows=rows).with_columns(id=pl.col("id") + key, round_added=pl.lit(key))
        catalog.write_partition("pool", key, frame, {})
    assert catalog.query("select round, count(*) from pool group by 1 order by 1")[1] == [
        ("r000", 3), ("r001", 5), ("r002", 5)]
    assert catalog.query("select round, count(*) from pool_added group by 1 order by 1")[1] == [
        ("r000", 3), ("r001", 2)]
    assert read_as_of(store, "pool", "r002")["id"].to_list() == [*(f"id-{i}r000" for i in range(3)),
                                                                  *(f"id-{i}r001" for i in range(2))]


def test_the_run_cache_answers_from_what_this_process_wrote_and_read(s3):
    client, prefix = s3
    uri, key = f"s3://{BUCKET}/{prefix}", f"{prefix}/pool/round=r001/part-0.parquet"
    store = open_store(uri, run_cache=True)
    store.write("pool", "r001", frame_of("pool"), metadata={"run_id": "a"})
    body, plain = objects(client, prefix)[key], open_store(uri)
    sent = sent_by(store.client)
    assert store.exists("pool", "r001")
    assert store.data_version("pool", "r001") == hashlib.sha256(body).hexdigest()[:16] == plain.data_version(
        "pool", "r001")
    assert store.read_metadata("pool", "r001") == {"run_id": "a"}
    assert store.read_schema("pool", "r001") == plain.read_schema("pool", "r001")
    assert sent == []  # all from the write
    # Another writer (a rerun in another process) replaces the partition: a read is always one GET of the
    # object as it is now, never cached, and what the cache knows follows that GET.
    plain.write("pool", "r001", frame_of("pool", rows=5), metadata={"run_id": "b"})
    assert store.read("pool", "r001").equals(frame_of("pool", rows=5)) and len(sent) == 1
    assert store.data_version("pool", "r001") == hashlib.sha256(objects(client, prefix)[key]).hexdigest()[:16]
    assert store.read_metadata("pool", "r001") == {"run_id": "b"} and len(sent) == 1
    # An absent partition is asked each time: it may be written meanwhile.
    assert not store.exists("pool", "r002")
    plain.write("pool", "r002", frame_of("pool"))
    assert store.exists("pool", "r002") and store.rounds("pool") == ["r001", "r002"] and len(sent) == 4
    # Without the run cache every question is a request, as before.
    asked = sent_by(plain.client)
    plain.exists("pool", "r001"), plain.data_version("pool", "r001"), plain.read_metadata("pool", "r001")
    assert [method for method, _, _ in asked] == ["HEAD", "HEAD", "GET"]


def test_the_lock_put_stays_conditional_with_the_run_cache(s3):
    client, prefix = s3
    store = open_store(f"s3://{BUCKET}/{prefix}", run_cache=True)
    sent = sent_by(store.client)
    for _ in range(2):
        with store.lock_round("r005", "run"):
            pass
    lock_puts = [headers for method, url, headers in sent if method == "PUT" and "/_locks/" in url]
    assert len(lock_puts) == 2 and all(headers.get("If-None-Match") == "*" for headers in lock_puts)


def test_journal_segments_in_the_store_are_read_back_from_an_empty_home(s3, tmp_path):
    client, prefix = s3
    uri = f"s3://{BUCKET}/{prefix}"
    segments = open_store(uri, run_cache=True).journal_segments("r001", "generations")
    assert segments.where == f"{uri}/_journal/r001/generations/"
    sent = sent_by(segments.store.client)
    with Journal(tmp_path / "a" / "j.jsonl", segments=segments, flush_responses=2, flush_s=3600) as journal:
        journal.append_many([("k1", "one"), ("k2", "two\nlines ✓")])
        journal.append("k3", "three")
    names = sorted(k for k in objects(client, prefix) if "/_journal/" in k)
    assert len(names) == 2 and all(re.fullmatch(
        rf"{prefix}/_journal/r001/generations/seg-\d{{8}}T\d{{12}}Z-[0-9a-f]{{32}}\.jsonl", name) for name in names)
    assert [headers.get("If-None-Match") for method, _, headers in sent if method == "PUT"] == ["*", "*"]
    assert [json.loads(line)["key"] for line in objects(client, prefix)[names[1]].decode().splitlines()] == ["k3"]
    fresh = Journal(tmp_path / "b" / "j.jsonl", segments=open_store(uri).journal_segments("r001", "generations"))
    assert fresh.texts == {"k1": "one", "k2": "two\nlines ✓", "k3": "three"}
    assert open_store(uri).tables() == []  # no table's listing sees them


ROUND_TABLES = ["generations", "verified_samples", "gradient_features", "selection", "pool", "clusters",
                "centroids", "diversity_scores"]


def _prism(home: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PRISM_HOME=str(home), TOKENIZERS_PARALLELISM="false", PRISM_FAULT_POINT=fault,
               PRISM_TEST_API_KEY="sk-s3-test")
    return subprocess.run([sys.executable, "-m", "prism_cli.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_a_round_on_s3_writes_every_table_and_survives_a_kill_between_uploads(s3, tmp_path, tiny_model_dir):
    client, prefix = s3
    uri = f"s3://{BUCKET}/{prefix}"
    server = DeterministicServer()
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "prism.yaml").write_text(ROUND_CONFIG.format(proxy=tiny_model_dir, url=server.url))
        # Killed (SIGKILL) after the round's features are uploaded, before its selection is.
        killed = _prism(home, "run", "--round", "r000", "--store", uri, fault="store.write:selection")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        written = {key: body for key, body in objects(client, prefix).items() if key.endswith(".parquet")}
        tables = {key.split("/")[-3] for key in written}
        assert {"seeds", "gradient_features"} <= tables and "selection" not in tables
        for body in written.values():  # every visible object is a whole Parquet file
            pq.read_table(pa.BufferReader(body))
        catalog = Catalog(home / "catalog.duckdb", open_store(uri))
        for view in catalog.views():  # the catalog names only tables with objects, and each one reads
            assert view in tables
            catalog.query(f"select count(*) from {view}")
        assert not (home / "store").exists()  # nothing went to the local default store

        finished = _prism(home, "demo", "--rounds", "1", "--store", uri, "--json")
        assert finished.returncode == 0, finished.stderr[-3000:]
        summary = json.loads(finished.stdout.strip().splitlines()[-1])
        store = open_store(uri)
        assert store.rounds("seeds") == ["r000"]
        for table in ROUND_TABLES:
            assert store.rounds(table) == ["r000", "r001"], table
        assert incomplete_uploads(client, prefix) == []
        assert [k for k in objects(client, prefix) if "/_locks/" in k] == []  # every lock released
        rows = {row["round"]: row for row in summary["rounds"]}
        assert rows["r001"]["pool"] == read_as_of(store, "pool", "r001").height > rows["r000"]["pool"] == 84

        queried = _prism(home, "query", "--json", "select round, count(*) as n from pool group by 1 order by 1")
        assert queried.returncode == 0, queried.stderr[-2000:]
        assert json.loads(queried.stdout)["rows"] == [
            {"round": key, "n": read_as_of(store, "pool", key).height} for key in ("r000", "r001")]
        # The provenance a later round relies on comes back from S3 too.
        used = store.read_metadata("generations", "r001")["previous_pool"]
        assert used["data_version"] == store.data_version("pool", "r000")
    finally:
        server.close()
