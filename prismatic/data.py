"""Read a user's samples (JSONL or Parquet) into a polars DataFrame `id, prompt, response, ...`.

Every problem is reported once, as an `InputError` naming the file, the line (JSONL) or row
(Parquet, 1-based) and the field. Nothing is written anywhere while reading.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from prismatic.config import DataFields
from prismatic.errors import InputError

BUNDLED_SEEDS = "seeds.jsonl"


def bundled_seeds_path() -> Path:
    """The seed set shipped with the package (math with \\boxed{} answers, and NLI pairs)."""
    return Path(str(resources.files("prismatic.seeds").joinpath(BUNDLED_SEEDS)))


def load_samples(path: str | Path, fields: DataFields | None = None) -> pl.DataFrame:
    """Load samples with non-empty string `id`, `prompt`, `response` (names per `fields`).

    Other fields are kept when every row has them with one type. Output columns are renamed to
    `id`, `prompt`, `response`.
    """
    fields = fields or DataFields()
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _jsonl_rows(path)
    if not rows:
        raise InputError(path, "no samples: the file is empty")

    required = {"id": fields.id_field, "prompt": fields.prompt_field, "response": fields.response_field}
    seen: dict[str, int] = {}
    columns: dict[str, list[Any]] = {name: [] for name in required}
    for line, row in rows:
        for name, source in required.items():
            if source not in row:
                raise InputError(path, "missing required field", line=line, field=source)
            value = row[source]
            if name == "id" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise InputError(path, f"expected a string, got {type(value).__name__}", line=line,
                                 field=source)
            if not value.strip():
                raise InputError(path, "must not be empty", line=line, field=source)
            columns[name].append(value)
        sample_id = columns["id"][-1]
        if sample_id in seen:
            raise InputError(path, f"duplicate id {sample_id!r} (first on line {seen[sample_id]})",
                             line=line, field=fields.id_field)
        seen[sample_id] = line
    frame = pl.DataFrame(columns, schema={name: pl.String for name in required})
    extras = _shared_extra_columns([row for _, row in rows], set(required.values()))
    return frame.with_columns(**{name: pl.Series(name, values) for name, values in extras.items()})


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                                 line=line_no) from None
            if not text.strip():
                continue
            try:
                value = json.loads(text, parse_constant=_reject_constant)
            except ValueError as exc:
                raise InputError(path, f"invalid JSON: {exc}", line=line_no) from None
            if not isinstance(value, dict):
                raise InputError(path, f"expected a JSON object, got {type(value).__name__}", line=line_no)
            rows.append((line_no, value))
    return rows


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _parquet_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several exception types for corrupt files
        raise InputError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return [(i, row) for i, row in enumerate(frame.iter_rows(named=True), start=1)]


def _shared_extra_columns(rows: list[dict[str, Any]], used: set[str]) -> dict[str, list[Any]]:
    """Extra fields present in every row with one JSON scalar type (e.g. answer, task, level)."""
    keys = set(rows[0]) - used
    extras = {}
    for key in sorted(keys):
        values = [row.get(key) for row in rows]
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and kinds <= {str, int, bool} or kinds == {float}:
            if kinds == {float} and not all(math.isfinite(v) for v in values):
                continue
            extras[key] = values
    return extras
