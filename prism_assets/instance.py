"""Settings of the Dagster instance that operates rounds: `<DAGSTER_HOME>/dagster.yaml`.

The home's instance lives in `$PRISM_HOME/dagster` (`make ui`, `prism run`). Its dagster.yaml gets:

    telemetry:
      enabled: false
    concurrency:
      pools:
        granularity: run   # a run with a step in a pool holds a slot of it from start to finish
        default_limit: 1   # pool `prism_rounds`: one round run in progress at a time

With the default queued run coordinator, queued runs start first in, first out, so the runs a
backfill submits in round order also start in that order, each after the previous one finished.
Keys already in the file are kept as they are (a deployment may set its own storage, limits, ...).

`python -m prism_assets.instance` writes the settings into `$PRISM_HOME/dagster` (`make ui` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from prismatic.config import resolve_home

SETTINGS: dict[str, Any] = {
    "telemetry": {"enabled": False},
    "concurrency": {"pools": {"granularity": "run", "default_limit": 1}},
}


def ensure_instance_settings(dagster_home: str | Path) -> Path:
    """Create `dagster_home` and add `SETTINGS` to its dagster.yaml, keeping keys already set there."""
    dagster_home = Path(dagster_home).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    current = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    merged = {**SETTINGS, **current}
    if merged != current:
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


if __name__ == "__main__":
    print(ensure_instance_settings(resolve_home() / "dagster"))
