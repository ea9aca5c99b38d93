"""The Prism home folder: `prism.yaml`, models, store, catalog and the Dagster instance live under it."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from prismatic.config import PrismConfig
from prismatic.config_file import CONFIG_FILE, load_config, resolve_home

_LOADED: dict[Path, tuple[bytes | None, PrismConfig]] = {}
"""Resolved home → (prism.yaml's bytes when it was loaded, None: no file; its configuration)."""


def _contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def home_config(home: str | Path | None = None) -> PrismConfig:
    """The validated prism.yaml of `home` (`resolve_home`: `home`, else `$PRISM_HOME`, else `./.prism`),
    parsed once per process per home and again only when the file's bytes change, so that a long-lived
    process (the daemon's sensors) sees an edit. Every resource, the definitions and the round runner
    share the one object it returns: read it, never change it (`model_copy(update=...)` for a variant).
    `$PRISM_STORE` is read when the file is parsed (`load_config`)."""
    path = resolve_home(home)
    key = path.resolve()
    contents = _contents(key / CONFIG_FILE)
    loaded = _LOADED.get(key)
    if loaded is None or loaded[0] != contents:
        loaded = _LOADED[key] = (contents, load_config(path))
    return loaded[1]


class PrismHome(ConfigurableResource):
    """Where `prism.yaml` is; resolves like the CLI (`$PRISM_HOME`, else `./.prism`). The definitions
    built from the environment set `home` to `EnvVar("PRISM_HOME")`, so each step process and pod
    reads its own environment."""

    home: str = ".prism"

    def config(self) -> PrismConfig:
        """The home's configuration, loaded once per process (`home_config`)."""
        return home_config(self.home)
