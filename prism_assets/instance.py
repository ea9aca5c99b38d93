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
in that pool can all start together (tests/test_services.py saw r000 and r001 of one backfill do so).

With the default queued run coordinator, queued runs start first in, first out, so the runs a
backfill submits in round order also start in that order, each after the previous one finished.
Keys already in dagster.yaml are kept as they are (a deployment may set its own storage, limits, ...).

`python -m prism_assets.instance` applies the settings to `$PRISM_HOME/dagster` (`make ui` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance

from prism_assets.partitions import ROUND_POOL
from prismatic.config import resolve_home

SETTINGS: dict[str, Any] = {
    "telemetry": {"enabled": False},
    "concurrency": {"pools": {"granularity": "run", "default_limit": 1}},
}


def ensure_instance_settings(dagster_home: str | Path) -> Path:
    """Create `dagster_home`, add `SETTINGS` to its dagster.yaml (keeping keys already set there) and give
    the pool `ROUND_POOL` one slot unless it has a limit; returns the dagster.yaml path."""
    dagster_home = Path(dagster_home).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    current = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    merged = {**SETTINGS, **current}
    if merged != current:
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        if ROUND_POOL not in instance.event_log_storage.get_concurrency_keys():
            instance.event_log_storage.set_concurrency_slots(ROUND_POOL, 1)
    return path


if __name__ == "__main__":
    print(ensure_instance_settings(resolve_home() / "dagster"))
