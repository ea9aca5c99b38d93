"""Read a user's samples (JSONL or Parquet) into a polars DataFrame `id, prompt, response, ...`.

Every problem is reported once, as an `InputError` naming the file, the line (JSONL) or row
(Parquet, 1-based) and the field, at the first bad line. Nothing is written anywhere while reading.
Refused: an empty file; a line that is not UTF-8, not JSON (a last line cut short is called out as
a truncated file), not an object, or longer than `data.max_line_mb`; a field that appears twice in
one record; NaN, Infinity or a number out of the float range anywhere in a record; strings with an
unpaired surrogate escape (they cannot be stored); a missing, non-string or blank id, prompt or
response; a repeated id (ids `1` and `"1"` are the same id).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import polars as pl

from prismatic.config import DataFields
from prismatic.errors import InputError

BUNDLED_SEEDS = "seeds.jsonl"
LINE_COLUMN = "__line__"
"""With `load_samples(..., with_lines=True)`: the 1-based line (JSONL) or row (Parquet) of each sample."""


@dataclass(frozen=True)
class FieldRule:
    """A field besides id, prompt and response that `load_samples` checks on every row.

    kind: `text` (a non-blank string) or `int` (an integer, not a boolean).
    required: every row must have it; otherwise a missing field is null.
    choices: the allowed values of a `text` field.
    minimum: the smallest allowed value of an `int` field.
    numbers_as_text: a `text` field also takes a JSON number, kept as its JSON text (an answer `42`).
    """

    kind: Literal["text", "int"]
    required: bool = True
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    numbers_as_text: bool = False


SEED_RULES = {
    "answer": FieldRule("text", numbers_as_text=True),
    "task": FieldRule("text", choices=("math", "nli")),
    "level": FieldRule("int", required=False, minimum=1),
    "source": FieldRule("text", required=False),
}
"""Seed sets: the reference answer and task on every row; a difficulty `level` ≥ 1 (default 1)."""


def bundled_seeds_path() -> Path:
    """The seed set shipped with the package (math with \\boxed{} answers, and NLI pairs)."""
    return Path(str(resources.files("prismatic.seeds").joinpath(BUNDLED_SEEDS)))


def load_seeds(source: str) -> pl.DataFrame:
    """The seed table (`id, prompt, response, answer, task, source, level`) of `bundled` or a path."""
    path = bundled_seeds_path() if source == "bundled" else Path(source)
    frame = load_samples(path, rules=SEED_RULES)
    return frame.select("id", "prompt", "response", "answer", "task",
                        pl.col("source").fill_null(path.name), pl.col("level").fill_null(1).cast(pl.Int64))


def load_samples(path: str | Path, fields: DataFields | None = None, *, rules: Mapping[str, FieldRule] | None = None,
                 with_lines: bool = False) -> pl.DataFrame:
    """Load samples with non-empty string `id`, `prompt`, `response` (names per `fields`).

    Fields in `rules` are checked on every row and always become columns. Other fields are kept
    when every row has them with one type. Output columns are renamed to `id`, `prompt`,
    `response`; `with_lines` adds `LINE_COLUMN`.
    """
    fields = fields or DataFields()
    rules = dict(rules or {})
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected a .jsonl or .parquet file")
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = jsonl_records(path, max(1, int(fields.max_line_mb * 2**20)))
    if not rows:
        raise InputError(path, "no samples: the file is empty")

    required = {"id": fields.id_field, "prompt": fields.prompt_field, "response": fields.response_field}
    seen: dict[str, int] = {}
    columns: dict[str, list[Any]] = {name: [] for name in [*required, *rules]}
    for line, row in rows:
        for name, source in required.items():
            if source not in row:
                raise InputError(path, "missing required field", line=line, field=source)
            value = row[source]
            if name == "id" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise InputError(path, f"expected a string, got {_type_name(value)}", line=line, field=source)
            if not value.strip():
                raise InputError(path, "must not be empty", line=line, field=source)
            columns[name].append(value)
        for name, rule in rules.items():
            columns[name].append(_checked(path, line, name, row.get(name), rule))
        sample_id = columns["id"][-1]
        if sample_id in seen:
            raise InputError(path, f"duplicate id {sample_id!r} (first on line {seen[sample_id]})",
                             line=line, field=fields.id_field)
        seen[sample_id] = line
    schema = {name: pl.String for name in required} | {
        name: pl.Int64 if rule.kind == "int" else pl.String for name, rule in rules.items()}
    frame = pl.DataFrame(columns, schema=schema)
    extras = _shared_extra_columns([row for _, row in rows], {*required.values(), *rules})
    frame = frame.with_columns(**{name: pl.Series(name, values) for name, values in extras.items()})
    if with_lines:
        frame = frame.with_columns(pl.Series(LINE_COLUMN, [line for line, _ in rows], dtype=pl.Int64))
    return frame


def _checked(path: Path, line: int, name: str, value: Any, rule: FieldRule) -> Any:
    """`value` of a field under `rule`, normalized (numbers as text for `text`), or an InputError."""
    if value is None:
        if rule.required:
            raise InputError(path, "missing required field", line=line, field=name)
        return None
    if rule.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(path, f"expected an integer, got {_type_name(value)}", line=line, field=name)
        if rule.minimum is not None and value < rule.minimum:
            raise InputError(path, f"must be at least {rule.minimum}, got {value}", line=line, field=name)
        if not -2**63 <= value < 2**63:
            raise InputError(path, f"{value} does not fit a 64-bit integer", line=line, field=name)
        return value
    if rule.numbers_as_text and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {_type_name(value)}", line=line, field=name)
    if not value.strip():
        raise InputError(path, "must not be empty", line=line, field=name)
    if rule.choices is not None and value not in rule.choices:
        raise InputError(path, f"expected one of {', '.join(rule.choices)}, got {value[:40]!r}", line=line,
                         field=name)
    return value


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", type(None): "null"}.get(type(value), type(value).__name__)


class _NonFinite(float):
    """A number JSON parsing produced that is not finite; `text` is how the file spelled it."""

    text: str

    def __new__(cls, text: str) -> _NonFinite:
        value = super().__new__(cls, text)
        value.text = text
        return value


def _parse_constant(text: str) -> float:
    return _NonFinite(text)


def _parse_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


class _RepeatedField(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        for name, _ in pairs:
            if name in seen:
                raise _RepeatedField(name)
            seen.add(name)
    return value


def jsonl_records(path: Path, max_line_bytes: int = int(DataFields().max_line_mb * 2**20)
                  ) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) of every non-blank line of a JSONL file, with every check of this module's
    docstring that is about lines and values (not about the id, prompt and response fields)."""
    rows = []
    with path.open("rb") as handle:
        line_no = 0
        while raw := handle.readline(max_line_bytes + 1):
            line_no += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise InputError(path, f"line longer than {max_line_bytes / 2**20:g} MiB (data.max_line_mb); "
                                       "not read", line=line_no)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                field = _field_where(_lenient(raw), lambda v: isinstance(v, str) and not _encodable(v))
                raise InputError(path, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                                 line=line_no, field=field) from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            value = _parse_line(path, line_no, text, last=not raw.endswith(b"\n"))
            rows.append((line_no, value))
    return rows


def _parse_line(path: Path, line_no: int, text: str, *, last: bool) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_parse_constant, parse_float=_parse_float, object_pairs_hook=_object)
    except _RepeatedField as exc:
        raise InputError(path, "appears twice in this record", line=line_no, field=exc.name) from None
    except RecursionError:
        raise InputError(path, "invalid JSON: nested too deeply", line=line_no) from None
    except ValueError as exc:
        hint = " (the file ends inside this record: was it cut short?)" if last else ""
        raise InputError(path, f"invalid JSON{hint}: {exc}", line=line_no) from None
    if not isinstance(value, dict):
        raise InputError(path, f"expected a JSON object, got {_type_name(value)}", line=line_no)
    _check_values(path, line_no, value)
    return value


def _check_values(path: Path, line: int, row: dict[str, Any]) -> None:
    """Refuse non-finite numbers and unpaired surrogates anywhere in a record, naming the field."""
    for name, value in row.items():
        bad = _first(value, lambda v: isinstance(v, float) and not math.isfinite(v))
        if bad is not None:
            text = bad.text if isinstance(bad, _NonFinite) else repr(bad)
            message = (f"{text} is not a valid JSON number" if text in ("NaN", "Infinity", "-Infinity")
                       else f"{text} is out of the range of a 64-bit float")
            raise InputError(path, message, line=line, field=name)
        bad = _first(value, lambda v: isinstance(v, str) and not _encodable(v))
        if bad is not None:
            raise InputError(path, "contains an unpaired surrogate escape (\\ud800-\\udfff), which is not text",
                             line=line, field=name)


def _first(value: Any, predicate) -> Any:
    """The first value in a nested JSON value (itself included) that satisfies `predicate`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if predicate(item):
            return item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lenient(raw: bytes) -> Any:
    """The line parsed with each undecodable byte as a lone surrogate (`surrogateescape`), which no
    valid text contains, or None: to find the field that holds the bad bytes."""
    try:
        return json.loads(raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff"))
    except (ValueError, RecursionError):
        return None


def _field_where(row: Any, predicate) -> str | None:
    if isinstance(row, dict):
        for name, value in row.items():
            if _first(value, predicate) is not None:
                return name
    return None


def _parquet_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several exception types for corrupt files
        raise InputError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    rows = []
    for i, row in enumerate(frame.iter_rows(named=True), start=1):
        field = _field_where(row, lambda v: isinstance(v, float) and not math.isfinite(v))
        if field is not None:
            raise InputError(path, "NaN or infinite value", line=i, field=field)
        rows.append((i, row))
    return rows


def _shared_extra_columns(rows: list[dict[str, Any]], used: set[str]) -> dict[str, list[Any]]:
    """Extra fields present in every row with one JSON scalar type (e.g. answer, task, level)."""
    keys = set(rows[0]) - used
    extras = {}
    for key in sorted(keys):
        values = [row.get(key) for row in rows]
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and kinds <= {str, int, bool, float}:
            if kinds == {int} and not all(-2**63 <= v < 2**63 for v in values):
                continue
            extras[key] = values
    return extras
