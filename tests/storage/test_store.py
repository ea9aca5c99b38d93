"""The local store and what every backend shares: round trips, atomic writes, provenance metadata, round keys,
round locks, and `open_store` picking the backend (schema checks: test_schema.py; S3: test_s3_store.py)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from table_samples import all_files, sample_frame, visible_files

from prismatic.errors import PrismError
from prismatic.storage.base import Store
from prismatic.storage.factory import open_store
from prismatic.storage.local import LocalStore
from prismatic.storage.locks import RoundLockedError
from prismatic.storage.schema import TABLES, schema


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize("table", list(TABLES))
def test_round_trip_every_table(store, table):
    frame = sample_frame(table)
    written = store.write(table, "r001", frame)
    assert written == store.location(table, "r001") == str(store.path(table, "r001"))
    path = store.path(table, "r001")
    assert path.parent.name == "round=r001" and path.parent.parent.name == table
    back = store.read(table, "r001")
    assert back.schema == schema(table, dim=8)
    assert back.equals(frame.select(list(TABLES[table])))
    # The partition column lives only in the directory name.
    assert "round" not in pq.read_schema(path).names
    assert store.exists(table, "r001") and not store.exists(table, "r002")
    assert store.rounds(table) == ["r001"]


def test_feature_column_keeps_its_width_and_float32(store):
    for dim in (4, 1024):
        frame = sample_frame("gradient_features", dim=dim)
        store.write("gradient_features", f"r00{dim % 7}", frame)
        back = store.read("gradient_features", f"r00{dim % 7}")
        assert back.schema["feature"] == pl.Array(pl.Float32, dim)
        np.testing.assert_array_equal(back["feature"].to_numpy(), frame["feature"].to_numpy())


def test_provenance_metadata_round_trip(store):
    meta = {"run_id": "abc", "inputs": {"pool": {"round": "r000", "data_version": "f00d"}}, "n": 3}
    store.write("pool", "r001", sample_frame("pool"), metadata=meta)
    assert store.read_metadata("pool", "r001") == meta
    store.write("pool", "r002", sample_frame("pool"))
    assert store.read_metadata("pool", "r002") == {}


def test_metadata_must_be_json(store):
    with pytest.raises(PrismError, match="pool.*JSON"):
        store.write("pool", "r001", sample_frame("pool"), metadata={"when": object()})
    assert all_files(store.root) == []


def test_failed_write_leaves_old_partition_intact_and_nothing_half_written(store, monkeypatch):
    old = sample_frame("verified_samples", n=5, seed=1)
    store.write("verified_samples", "r001", old, metadata={"version": 1})
    real_write = pq.write_table
    seen_during_write = {}

    def half_write(table, where, *args, **kwargs):
        where.write(b"PAR1" + b"\0" * 100)  # some bytes of a Parquet file, then the crash
        where.flush()
        seen_during_write["visible"] = visible_files(store.root)
        seen_during_write["frame"] = store.read("verified_samples", "r001")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        store.write("verified_samples", "r001", sample_frame("verified_samples", n=2), metadata={"version": 2})
    with pytest.raises(OSError, match="disk full"):
        store.write("verified_samples", "r002", sample_frame("verified_samples", n=2))
    # While the new file was being written, readers saw only the old, complete partition.
    assert seen_during_write["visible"] == ["verified_samples/round=r001/part-0.parquet"]
    assert seen_during_write["frame"].equals(old)
    # Afterwards: old partition intact, no new partition, no temporary file left behind.
    assert all_files(store.root) == ["verified_samples/round=r001/part-0.parquet"]
    assert store.read("verified_samples", "r001").equals(old)
    assert store.read_metadata("verified_samples", "r001") == {"version": 1}
    assert store.rounds("verified_samples") == ["r001"]
    assert not store.exists("verified_samples", "r002")
    monkeypatch.setattr(pq, "write_table", real_write)
    store.write("verified_samples", "r001", sample_frame("verified_samples", n=2), metadata={"version": 2})
    assert store.read("verified_samples", "r001").height == 2
    assert store.read_metadata("verified_samples", "r001") == {"version": 2}


def test_temporary_file_is_invisible_to_readers(store, monkeypatch):
    """The temporary file exists (complete) just before the rename, yet no reader glob matches it."""
    real_replace = __import__("os").replace
    seen = {}

    def spy_replace(src, dst):
        seen["tmp"] = src
        seen["visible"] = visible_files(store.root)
        return real_replace(src, dst)

    monkeypatch.setattr("prismatic.storage.atomic.os.replace", spy_replace)
    store.write("pool", "r001", sample_frame("pool"))
    tmp_name = str(seen["tmp"]).rsplit("/", 1)[-1]
    assert tmp_name.startswith(".") and not tmp_name.endswith(".parquet")
    assert seen["visible"] == []
    assert visible_files(store.root) == ["pool/round=r001/part-0.parquet"]


def test_rewrite_replaces_the_partition_whole(store):
    store.write("clusters", "r001", sample_frame("clusters", n=6))
    stray = store.path("clusters", "r001").parent / "part-1.parquet"
    pq.write_table(sample_frame("clusters", n=4, seed=9).to_arrow(), stray)
    store.write("clusters", "r001", sample_frame("clusters", n=3, seed=2))
    assert not stray.exists()
    assert all_files(store.root) == ["clusters/round=r001/part-0.parquet"]
    assert store.read("clusters", "r001").equals(sample_frame("clusters", n=3, seed=2))


def test_empty_frame_round_trips(store):
    empty = pl.DataFrame(schema=schema("selection"))
    store.write("selection", "r003", empty)
    assert store.read("selection", "r003").equals(empty)


@pytest.mark.parametrize("key", ["r1", "r01", "001", "R001", "r00a", "r001/..", "../r001", "round=r001", "r001\n", "",
                                 None])
def test_invalid_round_key_is_refused(store, key):
    with pytest.raises(PrismError, match="round key"):
        store.write("pool", key, sample_frame("pool"))
    for call in (store.read, store.exists, store.path, store.read_metadata):
        with pytest.raises(PrismError, match="round key"):
            call("pool", key)
    assert not store.root.exists() or all_files(store.root) == []


def test_rounds_are_sorted_numerically_and_ignore_junk(store):
    for key in ("r1000", "r002", "r999", "r000"):
        store.write("diversity_scores", key, sample_frame("diversity_scores"))
    table_dir = store.root / "diversity_scores"
    (table_dir / "round=r005").mkdir()  # a partition directory with no file yet
    (table_dir / "round=bad").mkdir()
    (table_dir / ".round=r006.x.tmp").write_bytes(b"junk")
    assert store.rounds("diversity_scores") == ["r000", "r002", "r999", "r1000"]
    assert store.rounds("pool") == []
    assert store.tables() == ["diversity_scores"]


def test_missing_partition_names_table_and_round(store):
    with pytest.raises(PrismError, match=r"'clusters'.*'r004'"):
        store.read("clusters", "r004")
    with pytest.raises(PrismError, match=r"'clusters'.*'r004'"):
        store.read_metadata("clusters", "r004")


def test_unknown_table_and_unknown_scheme_are_refused(store, tmp_path):
    with pytest.raises(PrismError, match="unknown table 'sample'"):
        store.write("sample", "r001", sample_frame("pool"))
    with pytest.raises(PrismError, match="unknown table"):
        store.rounds("../etc")
    with pytest.raises(PrismError, match="expected a directory, file:// or s3:// URI"):
        open_store("gs://bucket/prefix")
    with pytest.raises(PrismError, match="expected s3://bucket"):
        open_store("s3://Bad_Bucket/prefix", client=object())
    assert open_store(f"file://{tmp_path}").root == tmp_path


def test_corrupt_file_is_a_clear_error(store):
    path = store.path("pool", "r001")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(PrismError, match="not a readable Parquet file"):
        store.read("pool", "r001")


# ------------------------------------------------------------------------------------------ round lock

LOCKER = """
import sys, time
from prismatic.storage.factory import open_store
open_store(sys.argv[1]).lock_round(sys.argv[2], "locker --round " + sys.argv[2], run_id=sys.argv[3]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def start_locker(store: LocalStore, key: str = "r001", run_id: str = "run-A"):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(store.root), key, run_id], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_of_a_round_is_refused_and_a_killed_holder_leaves_no_stale_lock(store):
    import os

    holder = start_locker(store)
    try:
        with pytest.raises(RoundLockedError) as info:
            store.lock_round("r001", "prism run --round r001", run_id="run-B").acquire()
        message = str(info.value)
        assert f"round r001 of the store {store.root} is being written by locker --round r001 (pid {holder.pid}" \
               in message and "stops without writing" in message and str(store.lock_path("r001")) in message
        with store.lock_round("r002", "other round"):  # rounds lock independently
            pass
        # The holder is writing: its unpublished temporary files are left alone by others.
        leftover = store.root / "pool" / ".round=r001.x1.tmp"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"PAR1 half")
        other_round = store.root / "pool" / ".round=r002.x2.tmp"
        other_round.write_bytes(b"PAR1")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with store.lock_round("r001", "prism run --round r001", run_id="run-C") as lock:
        assert lock.replaced["owner"] == "locker --round r001" and lock.replaced["pid"] == holder.pid
        assert not leftover.exists() and other_round.exists()
        record = json.loads(store.lock_path("r001").read_text())
        assert (record["pid"], record["run_id"], record["round"]) == (os.getpid(), "run-C", "r001")
    assert store.lock_path("r001").read_text() == ""  # released: the file stays, empty
    assert store.tables() == [] and visible_files(store.root) == []  # lock files are not tables


def test_the_lock_is_reentrant_in_a_process_and_shared_by_the_processes_of_one_run(store):
    with store.lock_round("r001", "prism run", run_id="run-A"):
        with store.lock_round("r001", "dagster run run-A", run_id="run-A"):  # the in-process run it started
            pass
        assert json.loads(store.lock_path("r001").read_text())["owner"] == "prism run"  # still held
    holder = start_locker(store, run_id="run-A")
    try:
        step = store.lock_round("r001", "a step process of run-A", run_id="run-A").acquire()
        step.release()
        with pytest.raises(RoundLockedError):
            store.lock_round("r001", "another run", run_id="run-B").acquire()
    finally:
        holder.kill()
        holder.wait()


WRITER = """
import sys
import polars as pl
from prismatic.storage.factory import open_store
store = open_store(sys.argv[1])
frames = [pl.read_parquet(sys.argv[2]), pl.read_parquet(sys.argv[3])]
for i in range(int(sys.argv[4])):
    store.write("pool", "r001", frames[i % 2])
"""


def test_a_reader_never_sees_a_half_written_partition(store, tmp_path):
    """One process rewrites a partition 40 times, alternating two versions, while this one reads it."""
    import subprocess
    import sys

    versions = [sample_frame("pool", n=20000, seed=1), sample_frame("pool", n=15000, seed=2)]
    paths = []
    for i, frame in enumerate(versions):
        paths.append(tmp_path / f"v{i}.parquet")
        frame.write_parquet(paths[-1])
    store.write("pool", "r001", versions[1])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), *map(str, paths), "40"])
    seen = set()
    while writer.poll() is None:
        frame = store.read("pool", "r001")
        seen.add(next(i for i, version in enumerate(versions) if frame.equals(version)))
    assert writer.returncode == 0 and seen == {0, 1}


def test_a_backend_must_provide_every_storage_operation():
    class Partial(Store):
        def location(self, table, round_key):
            return ""

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    assert isinstance(open_store("relative/dir"), LocalStore)
    with pytest.raises(TypeError):  # `Store` is no constructor that dispatches on the URI: `open_store` is
        Store("relative/dir")
