"""Kill -9 real round processes at points the test chooses, rerun, and compare with a clean run.

Each round runs as `prism run --round rNNN` in its own process (a fork of `round_driver.py`, which
has the heavy imports done): the real CLI, Dagster instance, store, catalog and tiny proxy model.
The generator is the OpenAI-compatible engine against a deterministic HTTP server run by this
test, so generation is reproducible and the server counts what it was sent: after every kill, no
request already in the journal may reach the server again.

Home A runs r000 and r001 without interruption (the reference). Other homes run the same rounds
with SIGKILLs at fault points (`prismatic.faults`) and at a random moment, rerunning after each:
r000 from scratch, r001 from a copy of A taken after r000. After every kill, every partition a
reader can see must be a whole Parquet file equal to A's; the final tables must equal A's (the
timings some metrics record in `details`, and generation latencies, aside). The last tests stop a run while it holds its
round (SIGSTOP) and check that a second run of that round is refused, for `prism run` and for a
run Dagster launches.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from dagster import AssetExecutionContext, DagsterInstance, asset, materialize
from fake_llm import ROUND_CONFIG, DeterministicServer

from prism_assets import tables
from prism_assets.partitions import rounds
from prismatic.storage import schema
from prismatic.storage.deltas import read_as_of
from prismatic.storage.factory import open_store
from prismatic.storage.schema import empty
from prismatic.synthesis.steps import StepOutput
from resources.home import PrismHome
from resources.store import StoreResource

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-crash-test-SECRET-8d41c7"
ROUND_TABLES = [*schema.ROUND_TABLES, "rejections"]
KILLED = -signal.SIGKILL


class Driver:
    """`round_driver.py` in a subprocess: runs `prism` commands as forked children."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.count = 0
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PRISM_TEST_API_KEY=API_KEY)
        env.pop("PRISM_FAULT_POINT", None)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "round_driver.py")], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert "ready" in json.loads(self.proc.stdout.readline())

    def _ask(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, home: Path, *args: str, fault: str = "", fault_signal: str = "KILL") -> tuple[int, Path]:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{home.name}-{'-'.join(args)}.log"
        env = {"PRISM_HOME": str(home), "PRISM_FAULT_POINT": fault, "PRISM_FAULT_SIGNAL": fault_signal}
        return self._ask({"cmd": "run", "args": list(args), "env": env, "log": str(log)})["pid"], log

    def wait(self, pid: int) -> int:
        return self._ask({"cmd": "wait", "pid": pid})["exit"]

    def run(self, home: Path, *args: str, fault: str = "") -> tuple[int, str]:
        pid, log = self.start(home, *args, fault=fault)
        return self.wait(pid), log.read_text()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    started = DeterministicServer()
    yield started
    started.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    started = Driver(tmp_path_factory.mktemp("logs"))
    yield started
    started.close()


def make_home(path: Path, proxy: Path, url: str) -> Path:
    path.mkdir(parents=True)
    (path / "prism.yaml").write_text(ROUND_CONFIG.format(proxy=proxy, url=url))
    return path


@pytest.fixture(scope="module")
def homes(tmp_path_factory, tiny_model_dir, server, driver):
    """Home A with r000 and r001, uninterrupted (the reference), and a copy of A made after r000."""
    home = make_home(tmp_path_factory.mktemp("a") / "home", tiny_model_dir, server.url)
    code, log = driver.run(home, "run", "--round", "r000", "--json")
    assert code == 0, log[-3000:]
    after_r000 = tmp_path_factory.mktemp("a-r000") / "home"
    shutil.copytree(home, after_r000)
    (after_r000 / "catalog.duckdb").unlink()  # its views point into A's store; the next write rebuilds it
    code, log = driver.run(home, "run", "--round", "r001", "--json")
    assert code == 0, log[-3000:]
    return home, after_r000


@pytest.fixture(scope="module")
def reference(homes):
    return homes[0]


def journal_seeds(home: Path, key: str) -> set[int]:
    path = home / "journal" / f"{key}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {int(json.loads(line)["key"][:8], 16) & 0x7FFFFFFF for line in lines}


def visible_files(home: Path) -> list[Path]:
    """What a reader globs: `<table>/round=*/*.parquet`."""
    return sorted((home / "store").glob("*/round=*/*.parquet"))


def assert_consistent_with(home: Path, reference: Path, keys: list[str]) -> list[str]:
    """Every visible file is whole; every visible partition of `keys` equals the reference's.
    Returns the visible `table/round` partitions of `keys`."""
    for path in visible_files(home):
        pq.read_table(path)  # raises on a torn or half-written file
    store, ref = open_store(home / "store"), open_store(reference / "store")
    seen = []
    for key in keys:
        for table in ROUND_TABLES + (["seeds"] if key == "r000" else []):
            if store.exists(table, key):
                assert_frame_equal(store.read(table, key), ref.read(table, key), f"{table}/{key}")
                seen.append(f"{table}/{key}")
    return seen


def assert_frame_equal(got: pl.DataFrame, want: pl.DataFrame, what: str) -> None:
    """Equal tables, except for the timings some metrics record in `details` and the seconds each
    generation request took (`latency_s`)."""
    if "latency_s" in got.columns:
        got, want = got.drop("latency_s"), want.drop("latency_s")
    if "details" in got.columns:
        got, want = (frame.with_columns(pl.col("details").map_elements(_without_timing, return_dtype=pl.String))
                     for frame in (got, want))
    assert got.equals(want), f"{what} differs from the uninterrupted run"


def _without_timing(details: str) -> str:
    value = json.loads(details)
    return json.dumps({k: v for k, v in value.items() if k != "seconds"} if isinstance(value, dict) else value)


def test_seed_round_killed_while_writing_then_resumed(reference, tiny_model_dir, server, driver, tmp_path):
    home = make_home(tmp_path / "home", tiny_model_dir, server.url)
    code, _ = driver.run(home, "run", "--round", "r000", fault="store.write:gradient_features")
    assert code == KILLED
    partial = assert_consistent_with(home, reference, ["r000"])
    assert "verified_samples/r000" in partial and "gradient_features/r000" not in partial
    assert list((home / "store" / "gradient_features").glob(".round=r000.*.tmp"))  # the unpublished file

    code, log = driver.run(home, "run", "--round", "r000", "--json")
    assert code == 0, log[-3000:]
    assert "took over the lock" in log and "removed 1 temporary file" in log
    assert len(assert_consistent_with(home, reference, ["r000"])) == len(ROUND_TABLES) + 1
    assert not list((home / "store").glob("*/.round=*.tmp"))


def test_synthesis_round_killed_five_times_then_resumed(homes, server, driver, tmp_path):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    reference, after_r000 = homes
    home = tmp_path / "home"
    shutil.copytree(after_r000, home)
    sent_before = len(server.answered)
    checkpoints: list[tuple[int, set[int]]] = []  # (requests answered so far, requests journaled) at each kill

    def after_kill(expect_visible: list[str] | None) -> None:
        journaled = journal_seeds(home, "r001")
        assert all(done <= journaled for _, done in checkpoints)  # nothing finished was lost
        checkpoints.append((len(server.answered), journaled))
        visible = assert_consistent_with(home, reference, ["r000", "r001"])
        if expect_visible is not None:
            assert [p for p in visible if p.endswith("/r001")] == expect_visible

    # 1. During generation: after the 4th finished response was journaled.
    code, _ = driver.run(home, "run", "--round", "r001", fault="journal.append@4")
    assert code == KILLED
    assert len(journal_seeds(home, "r001")) == 4
    after_kill([])

    # 2. During a store write: the generations file is written but not yet published.
    code, _ = driver.run(home, "run", "--round", "r001", fault="store.write:generations")
    assert code == KILLED
    after_kill([])

    # 3. During featurization.
    code, _ = driver.run(home, "run", "--round", "r001", fault="features")
    assert code == KILLED
    after_kill(["generations/r001", "verified_samples/r001", "rejections/r001"])

    # 4. At a random moment, from outside.
    delay = random.Random(8).uniform(1.0, 3.0)
    pid, _ = driver.start(home, "run", "--round", "r001")
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    assert driver.wait(pid) == KILLED
    after_kill(None)

    # 5. While writing the last table of the round.
    code, _ = driver.run(home, "run", "--round", "r001", fault="store.write:diversity_scores")
    assert code == KILLED
    after_kill([f"{table}/r001" for table in ROUND_TABLES if table != "diversity_scores"])

    code, log = driver.run(home, "run", "--round", "r001", "--json")
    assert code == 0, log[-3000:]
    assert len(assert_consistent_with(home, reference, ["r000", "r001"])) == 2 * len(ROUND_TABLES) + 1

    # No request journaled before a kill reached the server after it; all were answered at least once.
    for answered_then, journaled_then in checkpoints:
        assert not journaled_then & set(server.answered[answered_then:])
    requests = journal_seeds(home, "r001")
    assert requests == journal_seeds(reference, "r001") and len(requests) == 3 * 2 + 3 * 2 * 3  # problems, solutions
    assert set(server.answered[sent_before:]) == requests

    # The killed runs are marked failed in the instance, the last one succeeded.
    instance = DagsterInstance.from_config(str(home / "dagster"))
    runs = instance.get_runs(RunsFilter(job_name="prism_round", tags={"dagster/partition": "r001"}))
    assert runs[0].status == DagsterRunStatus.SUCCESS and len(runs) >= 5  # the random kill may precede its run
    assert {run.status for run in runs[1:]} == {DagsterRunStatus.FAILURE}

    # Queries see whole rounds; the API key reached the server and nothing else.
    code, out = driver.run(home, "query", "--json", "select round, count(*) as n from pool group by 1 order by 1")
    rows = json.loads(next(line for line in out.splitlines() if line.startswith("{")))["rows"]
    assert code == 0 and [row["n"] for row in rows] == [
        read_as_of(open_store(reference / "store"), "pool", key).height for key in ("r000", "r001")]
    assert server.auth == {f"Bearer {API_KEY}"}
    for path in [*home.rglob("*"), *reference.rglob("*"), *driver.logs.glob("*")]:
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_second_run_of_a_round_is_refused_and_the_first_finishes(reference, driver):
    home = reference
    tables = {table: open_store(home / "store").read(table, "r001") for table in ROUND_TABLES}
    first, first_log = driver.start(home, "run", "--round", "r001", fault="features", fault_signal="STOP")
    deadline = time.monotonic() + 120
    while Path(f"/proc/{first}/stat").read_text().split(")")[1].split()[0] != "T":
        assert time.monotonic() < deadline, first_log.read_text()[-3000:]
        time.sleep(0.1)
    try:
        before = {p: p.stat().st_mtime_ns for p in (home / "store").rglob("*")}
        code, log = driver.run(home, "run", "--round", "r001")
        assert {p: p.stat().st_mtime_ns for p in (home / "store").rglob("*")} == before  # not a byte written
    finally:
        os.kill(first, signal.SIGCONT)
    lines = [line for line in log.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, log
    assert lines[0].startswith("prism: error: round r001 of the store") and f"pid {first}" in lines[0]
    assert "prism run --round r001" in lines[0] and "stops without writing" in lines[0]
    assert driver.wait(first) == 0, first_log.read_text()[-3000:]
    for table, frame in tables.items():  # the first run rewrote r001, identically
        assert_frame_equal(open_store(home / "store").read(table, "r001"), frame, table)


@asset(partitions_def=rounds)
def selection(context: AssetExecutionContext, store: StoreResource) -> None:
    tables.write_step(context, store, StepOutput({"selection": empty("selection")}))


def test_a_run_launched_by_dagster_for_a_locked_round_writes_nothing(tmp_path):
    """Runs the UI, a sensor or a backfill launch take the round's lock in the store resource."""
    home = tmp_path / "home"
    home.mkdir()
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("rounds", ["r001"])
    resources = {"store": StoreResource(prism_home=PrismHome(home=str(home)))}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "store")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = materialize([selection], partition_key="r001", instance=instance, resources=resources,
                             raise_on_error=False)
        assert not result.success and not (home / "store" / "selection").exists()
        errors = [str(event.event_specific_data.error.cause or event.event_specific_data.error)
                  for event in result.all_events if event.is_failure]
        assert any("round r001 of the store" in error and f"pid {holder.pid}" in error for error in errors), errors
    finally:
        holder.kill()
        holder.wait()
    assert materialize([selection], partition_key="r001", instance=instance, resources=resources).success
    assert open_store(home / "store").exists("selection", "r001")


HOLD_LOCK = """
import sys, time
from prismatic.storage.factory import open_store
open_store(sys.argv[1]).lock_round("r001", "prism run --round r001").acquire()
print("locked", flush=True)
time.sleep(120)
"""
