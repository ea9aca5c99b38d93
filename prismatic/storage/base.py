"""The table store's contract: `Store`, one Parquet file per table and round,
`<root>/<table>/round=<rNNN>/part-0.parquet`, and what every backend shares (validated writes,
provenance in the Parquet footer, reads). The backends are `local.LocalStore` and `s3.S3Store`;
`factory.open_store(uri)` picks one. See docs/data-model.md.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.errors import PrismError
from prismatic.rounds import check_round
from prismatic.storage.schema import TABLES, check_table, conform

if TYPE_CHECKING:
    from prismatic.storage.locks import BaseRoundLock
    from prismatic.storage.segments import JournalSegments

PART_FILE = "part-0.parquet"
PROVENANCE_KEY = b"prismatic.provenance"
LOCK_DIR = "_locks"
"""Directory under the store root that holds one lock file (S3: object) per round (no table glob matches it)."""
REPORT_DIR = "_reports"
"""Directory under the store root that holds each round's reports, `_reports/round=<rNNN>/<name>` (the round
atlas, `prismatic.report`); no table glob matches it."""


class Store(ABC):
    """Parquet tables per round, under a local directory (`LocalStore`) or an S3 prefix (`S3Store`).

    Both backends keep the same layout, the same checks and the same guarantees. Every table has a
    fixed polars schema (`schema.TABLES`); the hive partition column `round` lives only in the
    directory name, never inside a file, so DuckDB's `hive_partitioning` adds it.

    Writes are validated and atomic:
    - the frame must have exactly the table's columns; a column whose dtype differs is cast only when
      no value changes (Int32 → Int64, Float32 → Float64, an all-null column, ...), otherwise the write
      is refused with a `PrismError` naming the table and the column, and nothing is written;
    - key columns (`schema.KEYS`) must be non-null and unique within the partition;
    - the file is published at once: locally written to a temporary file, fsynced and renamed into
      place; on S3 one PUT, or a multipart upload that appears only when complete. A reader sees the
      old partition or the new one, never a half-written file; the store writes exactly one file per
      partition, so a rewrite replaces the partition whole (stray `*.parquet` files left there by
      anything else are removed after the swap).

    The frame's provenance (`metadata=`, a JSON-serializable dict) travels in the file's Parquet
    key-value metadata and comes back from `read_metadata`.

    One run at a time per round: `lock_round(key)` is an exclusive claim on every table of one round
    partition; a second run of the same round is refused with a message naming the run that holds it.
    Taking the lock also removes what a killed writer of that round left unpublished (temporary files;
    incomplete multipart uploads).
    """

    uri: str
    """Where the store is, as given to `open_store(...)` and recorded in run tags (absolute for a path)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # -- what a backend provides ---------------------------------------------------------------

    @abstractmethod
    def location(self, table: str, round_key: str) -> str:
        """Where the partition's file lives (whether or not it exists): a path or an s3:// URL."""

    @abstractmethod
    def glob(self, table: str) -> str:
        """A glob over every partition file of `table`, for DuckDB's `read_parquet`."""

    @abstractmethod
    def exists(self, table: str, round_key: str) -> bool:
        """Whether the partition has a file."""

    @abstractmethod
    def rounds(self, table: str) -> list[str]:
        """Round keys that have a file for `table`, in numeric order."""

    @abstractmethod
    def data_version(self, table: str, round_key: str) -> str:
        """SHA-256 (first 16 hex) of the partition's file: its Dagster data version."""

    @abstractmethod
    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> BaseRoundLock:
        """An exclusive claim on round `round_key`: `with store.lock_round("r001", "prism run"): ...`."""

    @abstractmethod
    def remove_temporary_files(self, round_key: str) -> int:
        """Remove what killed writers of round `round_key` left unpublished; returns how many.

        Only safe while holding the round's lock (the lock calls it when taken): then no live writer
        of that round exists.
        """

    @abstractmethod
    def _read_file(self, table: str, round_key: str, *, footer_only: bool = False) -> AbstractContextManager:
        """A context giving a readable pyarrow source of the file (or, `footer_only`, of at least its
        footer), read through one open handle or in one request: a rewrite in between must not pair
        the old footer with the new file's bytes."""

    @abstractmethod
    def _publish(self, table: str, round_key: str, data: bytes) -> None:
        """Make `data` the partition's file at once: before, readers see the old file; after, the new one."""

    @abstractmethod
    def write_report(self, round_key: str, name: str, data: bytes) -> str:
        """Publish `data` at once as `<root>/_reports/round=<rNNN>/<name>` (`REPORT_DIR`: a file beside the
        round's tables that no table glob reads); returns its location, a path or an s3:// URL."""

    def journal_segments(self, round_key: str, step: str) -> JournalSegments | None:
        """Where step `step` of round `round_key` flushes its journal's segments (`segments.JournalSegments`),
        or None when the journal's local file is enough: a local store's runs share one machine's
        `$PRISM_HOME`. An S3 store's steps may run on other machines (k8s pods), so it keeps them."""
        return None

    # -- shared ----------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Tables with at least one round, in `TABLES` order."""
        return [table for table in TABLES if self.rounds(table)]

    def _missing(self, table: str, round_key: str) -> PrismError:
        return PrismError(f"table '{table}' has no round '{round_key}' in the store at {self.uri}")

    def read(self, table: str, round_key: str, columns: list[str] | None = None) -> pl.DataFrame:
        """The partition as a frame with the table's schema (no `round` column); `columns`: only those."""
        check_table(table)
        with self._read_file(table, round_key) as source:
            try:
                data = pq.read_table(source, columns=columns)  # locally, only the column chunks asked for
            except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt file or unknown column
                raise PrismError(f"{self.location(table, round_key)}: not a readable Parquet file of "
                                 f"table '{table}' ({exc})") from None
        frame = pl.from_arrow(data)
        return conform(table, frame) if columns is None else frame

    def read_schema(self, table: str, round_key: str) -> pl.Schema:
        """The column names and dtypes of the partition's file, as written."""
        return pl.Schema(pl.from_arrow(self._footer(table, round_key).empty_table()).schema)

    def read_metadata(self, table: str, round_key: str) -> dict[str, Any]:
        """The provenance dict given to `write` (empty when none was given)."""
        raw = (self._footer(table, round_key).metadata or {}).get(PROVENANCE_KEY)
        return json.loads(raw) if raw else {}

    def _footer(self, table: str, round_key: str) -> pa.Schema:
        check_table(table)
        try:
            with self._read_file(table, round_key, footer_only=True) as source:
                return pq.read_schema(source)
        except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or unreadable file
            raise PrismError(f"{self.location(table, round_key)}: not a readable Parquet file ({exc})") from None

    def write(self, table: str, round_key: str, frame: pl.DataFrame,
              metadata: dict[str, Any] | None = None) -> str:
        """Validate `frame` and replace the partition `table`/`round_key` with it, atomically; returns
        its location. `metadata` (provenance) goes into the file's footer under `PROVENANCE_KEY`, as
        sorted-key JSON."""
        check_table(table)
        check_round(round_key)
        data = conform(table, frame).to_arrow()
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise PrismError(f"table '{table}': metadata must be a dict, got {type(metadata).__name__}")
            try:
                encoded = json.dumps(metadata, sort_keys=True, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise PrismError(f"table '{table}': metadata is not JSON-serializable ({exc})") from None
            data = data.replace_schema_metadata({**(data.schema.metadata or {}), PROVENANCE_KEY: encoded})
        buffer = io.BytesIO()
        pq.write_table(data, buffer)
        self._publish(table, round_key, buffer.getvalue())
        return self.location(table, round_key)
