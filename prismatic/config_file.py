"""Reading `$PRISM_HOME/prism.yaml` into the one configuration model (`prismatic.config.PrismConfig`).

`PRISM_HOME` defaults to `./.prism`; a missing file means all defaults. Every error names the file,
the line and the dotted field, e.g. `.prism/prism.yaml:4: field 'features.dim': Input should be
greater than 0`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prismatic.config import PrismConfig
from prismatic.errors import InputError

CONFIG_FILE = "prism.yaml"


def resolve_home(home: str | Path | None = None) -> Path:
    """`--home` if given, else `$PRISM_HOME`, else `./.prism`."""
    return Path(home or os.environ.get("PRISM_HOME") or ".prism")


def load_config(home: str | Path | None = None) -> PrismConfig:
    """Read and validate `<home>/prism.yaml` (`resolve_home`); a missing file means all defaults.

    `$PRISM_STORE`, when set, replaces the file's `store`: this is the one place the variable is read.
    A process reads the file once through `resources.home.home_config`, which caches this result.
    """
    home_path = resolve_home(home)
    path = home_path / CONFIG_FILE
    raw: dict[str, Any] = {}
    root_node = None
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            root_node = yaml.compose(text)
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(path, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                             line=mark.line + 1 if mark else None) from None
        if not isinstance(raw, dict):
            raise InputError(path, "the top level must be a mapping of sections", line=1)
    try:
        config = PrismConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        raise InputError(path, err["msg"], line=_line_of(root_node, loc), field=".".join(loc)) from None
    config.home = home_path
    if store := os.environ.get("PRISM_STORE"):
        config.store = store
    return config


def _line_of(node: Any, loc: list[str]) -> int | None:
    """1-based line of the deepest YAML node along `loc` (the key itself when it is unknown)."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == key:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return line
