"""Dagster instance storage on PostgreSQL: the seed round run by `prism run` against a real server.

The module's fixture starts PostgreSQL from Debian's binaries (`make postgres` installs the package
`postgresql`) in a temporary directory, listening on a free 127.0.0.1 port with password
authentication for the user `dagster`. PostgreSQL refuses to run as root: as root, the server's
commands run as the `postgres` user (or `nobody` when there is none) through `runuser`.
"""

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from prism_assets.automation.jobs import REPORT_ASSETS, ROUND_ASSETS

pytestmark = pytest.mark.scaleout

PRISM = shutil.which("prism", path=str(Path(sys.executable).parent)) or "prism"
PASSWORD = "pg-test-SECRET-31c7e0"
PASSWORD_ENV = "PRISM_TEST_PG_PASSWORD"


def find_initdb() -> str | None:
    """`initdb` on PATH, else the newest of Debian's `/usr/lib/postgresql/<version>/bin/initdb`."""
    found = shutil.which("initdb")
    if found:
        return str(Path(found).resolve())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return candidates[-1] if candidates else None


def server_user() -> list[str]:
    """The command prefix that drops root (PostgreSQL will not run as root); empty for other users."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    pytest.fail("running as root with neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """(host, port) of a running PostgreSQL server with database `dagster`, owned by user `dagster`."""
    initdb = find_initdb()
    if initdb is None:
        pytest.skip("no PostgreSQL initdb binary (PATH or /usr/lib/postgresql/*/bin); `make postgres` installs it")
    bindir = Path(initdb).parent
    as_user = server_user()
    root = Path(tempfile.mkdtemp(prefix="prism-pg-"))
    data = root / "data"
    (root / "pwfile").write_text(PASSWORD + "\n")
    if as_user:
        entry = pwd.getpwnam(as_user[2])
        for path in (root, root / "pwfile"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "dagster", "--auth=scram-sha-256",
                    f"--pwfile={root / 'pwfile'}", "--encoding=UTF8", "--no-sync"],
                   check=True, capture_output=True, cwd=root)
    options = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off"
    started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                              "-o", options, "-w", "-t", "60", "start"], capture_output=True, text=True, cwd=root)
    try:
        assert started.returncode == 0, started.stderr + (root / "server.log").read_text()
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", password=PASSWORD, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        conn.cursor().execute("CREATE DATABASE dagster")
        conn.close()
        yield "127.0.0.1", port
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
                       capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def test_round_runs_with_its_records_in_postgres(tmp_path, tiny_model_dir, postgres, monkeypatch):
    host, port = postgres
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(f"""
features:
  proxy: {tiny_model_dir}
  dim: 64
  model_dtype: float32
  projection_dtype: float32
metrics:
  names: [gvendi]
orchestration:
  storage: postgres
  postgres:
    host: {host}
    port: {port}
    db_name: dagster
    username: dagster
    password_env: {PASSWORD_ENV}
""")
    env = dict(os.environ, PRISM_HOME=str(home), TOKENIZERS_PARALLELISM="false", **{PASSWORD_ENV: PASSWORD})
    env.pop("PRISM_STORE", None)
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run([PRISM, "run", "--round", "r000", "--home", str(home), "--json"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run_id = json.loads(result.stdout)["run_id"]

    dagster_home = home / "dagster"
    text = (dagster_home / "dagster.yaml").read_text()
    assert PASSWORD not in text
    assert yaml.safe_load(text)["storage"]["postgres"]["postgres_db"]["password"] == {"env": PASSWORD_ENV}
    # Nothing of the instance's records went to SQLite files under the home.
    assert not [p for p in dagster_home.rglob("*") if p.suffix in {".db", ".sqlite"}]
    assert not (dagster_home / "history").exists() and not (dagster_home / "schedules").exists()

    # This process (not the one that ran the round) reads the runs through the instance ...
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.job_name == "prism_round" and run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == "r000"
        seed_runs = instance.get_runs(RunsFilter(job_name="seed_job"))
        assert [r.status for r in seed_runs] == [DagsterRunStatus.SUCCESS]
        for name in ("generations", "verified_samples", "gradient_features", "pool", "diversity_scores"):
            assert instance.get_materialized_partitions(AssetKey(name)) == {"r000"}, name
        assert instance.get_latest_materialization_event(AssetKey("diversity_scores")).run_id == run_id
        assert instance.event_log_storage.get_concurrency_info("prism_rounds").slot_count == 1

    # ... and so does the server itself: the rows are in PostgreSQL's tables.
    with psycopg2.connect(host=host, port=port, user="dagster", password=PASSWORD, dbname="dagster") as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT run_id, pipeline_name, status FROM runs ORDER BY id")
        rows = cursor.fetchall()
        cursor.execute("SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                       (run_id, "ASSET_MATERIALIZATION"))
        materialized = sorted(AssetKey.from_db_string(key).to_user_string() for (key,) in cursor.fetchall())
    conn.close()
    assert [(job, status) for _, job, status in rows] == [("seed_job", "SUCCESS"), ("prism_round", "SUCCESS")]
    assert rows[-1][0] == run_id
    assert materialized == sorted([*ROUND_ASSETS, *REPORT_ASSETS])  # one materialization of each asset of the round
