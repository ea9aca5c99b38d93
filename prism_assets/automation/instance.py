"""Settings of the Dagster instance that operates rounds: `<DAGSTER_HOME>/dagster.yaml` and the
limit of the pool `prism_rounds`.

The home's instance lives in `$PRISM_HOME/dagster` (`make ui`, `prism run`). Its dagster.yaml gets:

    telemetry:
      enabled: false
    concurrency:
      pools:
        granularity: run   # a run with a step in a pool holds a slot of it from start to finish
        default_limit: 1   # pools without a limit of their own get one slot

and the pool `prism_rounds` gets a limit of 1 in the instance's storage, as
`dagster instance concurrency set prism_rounds 1` would (a limit set before, in the UI or with that
command, is kept). The explicit limit matters: in dagster 1.13 a pool limited only by
`default_limit` gets its limit while the queue daemon is already deciding, so the first runs queued
in that pool can all start together (tests/integration/test_services.py saw r000 and r001 of one backfill do so).

With the default queued run coordinator, queued runs start first in, first out, so the runs a
backfill submits in round order also start in that order, each after the previous one finished.

The `storage` key belongs to prism.yaml's `orchestration.storage` (docs/architecture.md "Executors"):
`postgres` writes dagster-postgres's block from `orchestration.postgres`, with the password as a
reference to the environment variable `password_env` (the password itself is never written):

    storage:
      postgres:
        postgres_db: {hostname: ..., port: ..., db_name: ..., username: ..., password: {env: ...},
                      scheme: postgresql+psycopg2}   # the driver dagster-postgres installs

and `sqlite` removes the key, so Dagster keeps its records in SQLite files under DAGSTER_HOME (its
default). Every other key already in dagster.yaml is kept as it is (a deployment may set its own
run coordinator, limits, ...).

`python -m prism_assets.automation.instance` applies the settings of `$PRISM_HOME/prism.yaml` to
`$PRISM_HOME/dagster` (`make ui` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance

from prism_assets.partitions import ROUND_POOL
from prismatic.config import OrchestrationConfig
from prismatic.config_file import load_config, resolve_home

PG_SCHEME = "postgresql+psycopg2"
"""SQLAlchemy URL scheme of the Postgres storage: dagster-postgres installs psycopg2, while a bare
`postgresql` means psycopg 3 in SQLAlchemy 2.1 (which is not installed)."""
SETTINGS: dict[str, Any] = {
    "telemetry": {"enabled": False},
    "concurrency": {"pools": {"granularity": "run", "default_limit": 1}},
}


def storage_settings(orchestration: OrchestrationConfig) -> dict[str, Any] | None:
    """dagster.yaml's `storage` value for `orchestration.storage`; None: Dagster's default (SQLite)."""
    if orchestration.storage != "postgres":
        return None
    pg = orchestration.postgres
    return {"postgres": {"postgres_db": {"hostname": pg.host, "port": pg.port, "db_name": pg.db_name,
                                         "username": pg.username, "password": {"env": pg.password_env},
                                         "scheme": PG_SCHEME}}}


def write_instance_settings(dagster_home: str | Path, orchestration: OrchestrationConfig | None = None) -> Path:
    """Create `dagster_home`, add `SETTINGS` to its dagster.yaml (keeping keys already set there) and set
    its `storage` from `orchestration` (default: `OrchestrationConfig()`, SQLite); returns the dagster.yaml
    path. Writes the file only; nothing connects to the storage."""
    orchestration = orchestration or OrchestrationConfig()
    dagster_home = Path(dagster_home).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    current = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    merged = {**SETTINGS, **current}
    merged.pop("storage", None)
    if (storage := storage_settings(orchestration)) is not None:
        merged["storage"] = storage
    if merged != current:
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def ensure_instance_settings(dagster_home: str | Path, orchestration: OrchestrationConfig | None = None) -> Path:
    """`write_instance_settings`, then give the pool `ROUND_POOL` one slot in the instance's storage
    unless it has a limit; returns the dagster.yaml path."""
    path = write_instance_settings(dagster_home, orchestration)
    with DagsterInstance.from_config(str(path.parent)) as instance:
        if ROUND_POOL not in instance.event_log_storage.get_concurrency_keys():
            instance.event_log_storage.set_concurrency_slots(ROUND_POOL, 1)
    return path


if __name__ == "__main__":
    home = resolve_home()
    print(ensure_instance_settings(home / "dagster", load_config(home).orchestration))
