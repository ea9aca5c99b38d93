"""The table store: one Parquet file per table and round, `<root>/<table>/round=<rNNN>/part-0.parquet`,
under a local directory (`LocalStore`) or an S3 prefix (`S3Store`); `Store(uri)` picks by the URI.

Every table of DESIGN §4 has a fixed polars schema (`TABLES`). The hive partition column `round`
lives only in the directory name, never inside a file, so DuckDB's `hive_partitioning` adds it.

Writes are validated and atomic:
- the frame must have exactly the table's columns; a column whose dtype differs is cast only when
  no value changes (Int32 → Int64, Float32 → Float64, an all-null column, ...), otherwise the write
  is refused with a `PrismError` naming the table and the column, and nothing is written;
- key columns (`KEYS`) must be non-null and unique within the partition;
- the file is published at once: locally written to a temporary file, fsynced and renamed into
  place; on S3 one PUT, or a multipart upload that appears only when complete. A reader sees the
  old partition or the new one, never a half-written file; the store writes exactly one file per
  partition, so a rewrite replaces the partition whole (stray `*.parquet` files left there by
  anything else are removed after the swap).

The frame's provenance (`metadata=`, a JSON-serializable dict) travels in the file's Parquet
key-value metadata and comes back from `read_metadata`.

One run at a time per round: `Store.lock_round(key)` is an exclusive claim on every table of one
round partition (`RoundLock` locally, `S3RoundLock` on S3); a second run of the same round is
refused with a message naming the run that holds it. Taking the lock also removes what a killed
writer of that round left unpublished (temporary files; incomplete multipart uploads).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from prismatic.config import PrismConfig, S3Config
from prismatic.errors import PrismError
from prismatic.faults import fault_point
from prismatic.rounds import ROUND_RE, check_round, round_sort_key
from prismatic.storage.schema import PARTITION_COLUMN, TABLES, check_table, conform

log = logging.getLogger(__name__)

PART_FILE = "part-0.parquet"
PROVENANCE_KEY = b"prismatic.provenance"
LOCK_DIR = "_locks"
"""Directory under the store root that holds one lock file (S3: object) per round (no table glob matches it)."""
FOOTER_GUESS = 64 * 1024
"""Bytes an S3 store reads from an object's end to get its Parquet footer (schema, provenance) in one GET."""

class Store(ABC):
    """Parquet tables per round, under a local directory or an S3 prefix.

    `Store(uri)` gives a `LocalStore` for a path (or `file://` URI) and an `S3Store` for
    `s3://bucket/prefix`; both keep the same layout, the same checks and the same guarantees (one
    file per partition, replaced whole or not at all; provenance in the file; one writer per round).
    """

    def __new__(cls, uri: str | Path, **kwargs: Any):
        if cls is Store:
            cls = S3Store if str(uri).startswith("s3://") else LocalStore
        return super().__new__(cls)

    uri: str
    """Where the store is, as given to `Store(...)` and recorded in run tags (absolute for a path)."""

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
    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> RoundLock:
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
        its location."""
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


class LocalStore(Store):
    """Tables under a local directory: `<root>/<table>/round=<rNNN>/part-0.parquet`.

    A write goes to a temporary file beside the partition directory (a dot-name ending in `.tmp`,
    which no `round=*/*.parquet` glob matches), is fsynced, then moved into place with `os.replace`.
    Stray `*.parquet` files left in the partition by anything else are removed after the swap.
    """

    def __init__(self, uri: str | Path):
        text = str(uri)
        if text.startswith("file://"):
            text = text[len("file://"):]
        elif "://" in text:
            raise PrismError(f"store {text!r}: expected a directory, file:// or s3:// URI")
        self.root = Path(text).expanduser().absolute()
        self.uri = str(self.root)

    def _table_dir(self, table: str) -> Path:
        return self.root / check_table(table)

    def _partition_dir(self, table: str, round_key: str) -> Path:
        return self._table_dir(table) / f"{PARTITION_COLUMN}={check_round(round_key)}"

    def lock_path(self, round_key: str) -> Path:
        """The lock file of round `round_key` (see `RoundLock`)."""
        return self.root / LOCK_DIR / f"{PARTITION_COLUMN}={check_round(round_key)}.lock"

    def path(self, table: str, round_key: str) -> Path:
        return self._partition_dir(table, round_key) / PART_FILE

    def location(self, table: str, round_key: str) -> str:
        return str(self.path(table, round_key))

    def glob(self, table: str) -> str:
        return str(self._table_dir(table) / f"{PARTITION_COLUMN}=*" / "*.parquet")

    def exists(self, table: str, round_key: str) -> bool:
        return self.path(table, round_key).is_file()

    def rounds(self, table: str) -> list[str]:
        table_dir = self._table_dir(table)
        if not table_dir.is_dir():
            return []
        prefix = f"{PARTITION_COLUMN}="
        found = []
        for entry in table_dir.iterdir():
            key = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and ROUND_RE.fullmatch(key) and (entry / PART_FILE).is_file():
                found.append(key)
        return sorted(found, key=round_sort_key)

    def data_version(self, table: str, round_key: str) -> str:
        digest = hashlib.sha256()
        with self._read_file(table, round_key) as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()[:16]

    @contextmanager
    def _read_file(self, table: str, round_key: str, *, footer_only: bool = False):
        path = self.path(table, round_key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise self._missing(table, round_key) from None
        except OSError as exc:
            raise PrismError(f"{path}: cannot read ({exc.strerror})") from None
        with handle:
            yield handle

    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> RoundLock:
        return RoundLock(self, round_key, owner, run_id=run_id)

    def remove_temporary_files(self, round_key: str) -> int:
        removed = 0
        pattern = f".{PARTITION_COLUMN}={check_round(round_key)}.*.tmp"
        for table in TABLES:
            table_dir = self._table_dir(table)
            if table_dir.is_dir():
                for leftover in table_dir.glob(pattern):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed

    def _publish(self, table: str, round_key: str, data: bytes) -> None:
        target = self.path(table, round_key)
        partition = target.parent
        table_dir = partition.parent
        table_dir.mkdir(parents=True, exist_ok=True)
        # Beside the partition directory, a dot-name not ending in .parquet: no reader's glob sees it.
        fd, tmp = tempfile.mkstemp(dir=table_dir, prefix=f".{partition.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            fault_point(f"store.write:{table}")
            partition.mkdir(exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for stray in partition.glob("*.parquet"):
            if stray.name != PART_FILE:
                stray.unlink(missing_ok=True)
        _fsync_dir(partition)
        _fsync_dir(table_dir)


class S3Store(Store):
    """Tables under `s3://bucket/prefix`: `<prefix>/<table>/round=<rNNN>/part-0.parquet`.

    `client` is a boto3 S3 client (the Dagster resource passes dagster-aws's `S3Resource` client);
    None: one from the standard AWS chain (`AWS_ENDPOINT_URL`, profiles, roles), with `settings`.

    Atomic by S3's own rule: an object appears only when its upload completes. A file up to
    `settings.part_size_mb` is one PUT; a larger one is a multipart upload whose object appears only
    at `CompleteMultipartUpload` (a failed upload is aborted; one whose writer was killed stays an
    invisible incomplete upload until the round's next lock holder aborts it). Each object carries
    the SHA-256 of its bytes (`x-amz-meta-sha256`), its data version without reading it back.
    Provenance is read from the file's footer with one ranged GET.
    """

    def __init__(self, uri: str, *, client: Any = None, settings: S3Config | None = None):
        self.bucket, self.prefix = parse_s3_uri(str(uri))
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings or S3Config()
        self.client = client if client is not None else s3_client(self.settings)

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def key(self, table: str, round_key: str) -> str:
        return self._key(check_table(table), f"{PARTITION_COLUMN}={check_round(round_key)}", PART_FILE)

    def location(self, table: str, round_key: str) -> str:
        return f"s3://{self.bucket}/{self.key(table, round_key)}"

    def glob(self, table: str) -> str:
        return f"s3://{self.bucket}/{self._key(check_table(table), f'{PARTITION_COLUMN}=*', '*.parquet')}"

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        """`client.<method>(Bucket=..., **kwargs)` with errors as one-line `PrismError`s naming `what`."""
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise PrismError(f"{what}: S3 {method} failed: {error.get('Code')} {error.get('Message', '')}".strip()
                             ) from None
        except BotoCoreError as exc:
            raise PrismError(f"{what}: S3 {method} failed: {exc}") from None

    def exists(self, table: str, round_key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(table, round_key))
            return True
        except ClientError as exc:
            if _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise PrismError(f"{self.location(table, round_key)}: S3 head_object failed: {_s3_code(exc)}") from None

    def _list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call(f"s3://{self.bucket}/{prefix}", "list_objects_v2", **kwargs)
            keys += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def rounds(self, table: str) -> list[str]:
        prefix = self._key(check_table(table), f"{PARTITION_COLUMN}=")
        found = set()
        for key in self._list(prefix):
            directory, _, name = key[len(prefix):].partition("/")
            if name == PART_FILE and ROUND_RE.fullmatch(directory):
                found.add(directory)
        return sorted(found, key=round_sort_key)

    def data_version(self, table: str, round_key: str) -> str:
        digest = self._head(table, round_key).get("Metadata", {}).get("sha256")
        return digest[:16] if digest else hashlib.sha256(self._get(table, round_key)).hexdigest()[:16]

    def _head(self, table: str, round_key: str) -> dict:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(table, round_key))
        except ClientError as exc:
            if _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise self._missing(table, round_key) from None
            raise PrismError(f"{self.location(table, round_key)}: S3 head_object failed: {_s3_code(exc)}") from None

    def _get(self, table: str, round_key: str, **kwargs: Any) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(table, round_key), **kwargs)["Body"].read()
        except ClientError as exc:
            if _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                raise self._missing(table, round_key) from None
            raise PrismError(f"{self.location(table, round_key)}: S3 get_object failed: {_s3_code(exc)}") from None

    @contextmanager
    def _read_file(self, table: str, round_key: str, *, footer_only: bool = False):
        if footer_only:
            yield _footer_reader(lambda size: self._get(table, round_key, Range=f"bytes=-{size}"))
        else:
            yield pa.BufferReader(self._get(table, round_key))

    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> S3RoundLock:
        return S3RoundLock(self, round_key, owner, run_id=run_id)

    def lock_key(self, round_key: str) -> str:
        return self._key(LOCK_DIR, f"{PARTITION_COLUMN}={check_round(round_key)}.json")

    def remove_temporary_files(self, round_key: str) -> int:
        """Abort the round's incomplete multipart uploads (invisible objects that killed writers left)."""
        marker = f"/{PARTITION_COLUMN}={check_round(round_key)}/"
        aborted, kwargs = 0, {"Prefix": self._key("")}
        while True:
            page = self._call(self.uri, "list_multipart_uploads", **kwargs)
            for upload in page.get("Uploads", []):
                if marker in f"/{upload['Key']}":
                    self._call(self.uri, "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    def _publish(self, table: str, round_key: str, data: bytes) -> None:
        key, where = self.key(table, round_key), self.location(table, round_key)
        metadata = {"sha256": hashlib.sha256(data).hexdigest()}
        part_size = self.settings.part_size_mb * 2**20
        if len(data) <= part_size:
            fault_point(f"store.write:{table}")
            self._call(where, "put_object", Key=key, Body=data, Metadata=metadata)
        else:
            upload = self._call(where, "create_multipart_upload", Key=key, Metadata=metadata)["UploadId"]
            try:
                parts = []
                for number, start in enumerate(range(0, len(data), part_size), start=1):
                    if number > 1:
                        fault_point(f"store.upload_part:{table}")
                    reply = self._call(where, "upload_part", Key=key, UploadId=upload, PartNumber=number,
                                       Body=data[start:start + part_size])
                    parts.append({"ETag": reply["ETag"], "PartNumber": number})
                fault_point(f"store.write:{table}")
                self._call(where, "complete_multipart_upload", Key=key, UploadId=upload,
                           MultipartUpload={"Parts": parts})
            except BaseException:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
                except (ClientError, BotoCoreError) as exc:  # the lock's next holder aborts it then
                    log.warning("%s: could not abort the failed upload %s (%s)", where, upload, exc)
                raise
        partition = key.rsplit("/", 1)[0] + "/"
        for stray in self._list(partition):
            if stray.endswith(".parquet") and stray != key:
                self._call(where, "delete_object", Key=stray)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at its ends) of `s3://bucket[/prefix]`."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", uri)
    if not match:
        raise PrismError(f"store {uri!r}: expected s3://bucket or s3://bucket/prefix with a valid bucket name")
    return match.group(1), (match.group(2) or "").strip("/")


def s3_client(settings: S3Config) -> Any:
    """A boto3 S3 client from the standard AWS chain, with `settings`' endpoint, region and profile."""
    session = boto3.session.Session(profile_name=settings.profile_name)
    return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region_name)


def open_store(config: PrismConfig, *, s3_client: Any = None) -> Store:
    """The store of a home's configuration (`store_uri`: `--store`, `$PRISM_STORE`, prism.yaml)."""
    uri = config.store_uri
    if uri.startswith("s3://"):
        return S3Store(uri, client=s3_client, settings=config.s3)
    return Store(uri)


def _footer_reader(tail: Any) -> pa.BufferReader:
    """The last bytes of a Parquet file, enough for `pq.read_schema`: `tail(size)` returns the file's last
    `size` bytes (all of them when it is shorter); one call unless the footer is longer than a guess."""
    data = tail(FOOTER_GUESS)
    footer = int.from_bytes(data[-8:-4], "little") + 8 if len(data) >= 8 else 0
    if footer > len(data):  # a footer longer than the guess (very wide tables)
        data = tail(footer)
    return pa.BufferReader(data)


def _s3_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class RoundLockedError(PrismError):
    """Another live run holds the lock of the round this run wants to write."""


_held: dict[str, list] = {}
"""Locks this process holds: lock path or URL → [file descriptor or S3RoundLock, nesting depth]."""
_held_guard = threading.Lock()


class _HeldInContext:
    """`with lock:` takes the lock (`acquire`) and gives it back (`release`)."""

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RoundLock(_HeldInContext):
    """Exclusive right to write one round partition (all its tables) of a store.

    The lock is a file `<root>/_locks/round=<rNNN>.lock` under an `flock` held for the lock's whole
    life. Its content is a JSON record of the holder, `{owner, run_id, pid, host, started}`, so a
    refused run can say who holds the round. Properties:

    - A second process is refused at once (`RoundLockedError`, a `PrismError`): nothing waits, nothing
      is written by the refused run.
    - A holder killed with SIGKILL cannot leave a stale lock: the kernel drops an `flock` when the
      process dies, so the rerun takes the lock, logs whose record it replaced, and removes the
      temporary files the dead writer left (`Store.remove_temporary_files`).
    - Re-entrant in a process: `prism run` holds the lock and the Dagster run it starts in-process
      takes it again (the store resource locks each run's partition). A process of the same Dagster
      run (`run_id`, multiprocess executor: one process per step) may write while the lock is held
      in that run's name; it does not hold the lock itself.
    - The file is never deleted (an unlinked lock file would let two processes lock two different
      files); releasing empties it.

    """

    def __init__(self, store: LocalStore, round_key: str, owner: str, *, run_id: str | None = None):
        self.store = store
        self.round_key = check_round(round_key)
        self.owner = owner
        self.run_id = run_id
        self.path = store.lock_path(round_key)
        self.replaced: dict[str, Any] | None = None
        """The record of a dead holder whose lock this one took over (None when there was none)."""
        self._holding = False

    def __repr__(self) -> str:
        return f"RoundLock({str(self.path)!r}, owner={self.owner!r})"

    def acquire(self) -> RoundLock:
        """Take the lock, or raise `RoundLockedError` naming the holder."""
        key = str(self.path)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._holding = True
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_record(fd)
                os.close(fd)
                if self.run_id and holder.get("run_id") == self.run_id:
                    return self  # a process of the run that holds the lock
                raise RoundLockedError(_refusal(self.round_key, store_uri=self.store.uri, holder=holder,
                                                where=f"lock file: {self.path}")) from None
            except OSError as exc:
                os.close(fd)
                raise PrismError(f"cannot lock round {self.round_key} at {self.path}: {exc.strerror}") from None
            self.replaced = _lock_record(fd) or None
            record = {"round": self.round_key, "owner": self.owner, "run_id": self.run_id, "pid": os.getpid(),
                      "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            _held[key] = [fd, 1]
            self._holding = True
        if self.replaced:
            log.warning("round %s: took over the lock of %s (pid %s on %s, since %s), which is no longer running",
                        self.round_key, self.replaced.get("owner"), self.replaced.get("pid"),
                        self.replaced.get("host"), self.replaced.get("started"))
        removed = self.store.remove_temporary_files(self.round_key)
        if removed:
            log.warning("round %s: removed %d temporary file(s) left by an interrupted write", self.round_key, removed)
        return self

    def release(self) -> None:
        """Give the lock back (the outermost release of this process empties the file and unlocks it)."""
        if not self._holding:
            return
        self._holding = False
        key = str(self.path)
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1]:
                return
            del _held[key]
            fd = entry[0]
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)



class S3RoundLock(_HeldInContext):
    """`RoundLock` for an S3 store, which has no flock: the holder record is the object
    `<prefix>/_locks/round=<rNNN>.json`, created with a conditional PUT (`If-None-Match: *`), so of
    two writers exactly one creates it.

    - The holder refreshes the record's `heartbeat` every `lease/4` seconds in a daemon thread (a
      PUT conditional on the record it last wrote, `If-Match: <ETag>`).
    - A record is stale when its holder is on this host and its pid is gone, or when its heartbeat
      is older than `s3.lock_lease_s`; a stale record is replaced by a PUT conditional on its ETag,
      so of two processes taking over one dead lock exactly one succeeds. The new holder then aborts
      the round's incomplete multipart uploads (`S3Store.remove_temporary_files`).
    - Re-entrant in a process; a process of the run named in the record (`run_id`: multiprocess or
      k8s steps of one run) may write without holding it, as with `RoundLock`.
    - Releasing deletes the record (conditional on its ETag: a record another process took over stays).
    """

    def __init__(self, store: S3Store, round_key: str, owner: str, *, run_id: str | None = None):
        self.store = store
        self.round_key = check_round(round_key)
        self.owner = owner
        self.run_id = run_id
        self.key = store.lock_key(round_key)
        self.url = f"s3://{store.bucket}/{self.key}"
        self.lease = store.settings.lock_lease_s
        self.replaced: dict[str, Any] | None = None
        self._holding = False
        self._etag: str | None = None
        self._record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"S3RoundLock({self.url!r}, owner={self.owner!r})"

    def _put(self, record: dict[str, Any], **condition: str) -> str:
        reply = self.store.client.put_object(Bucket=self.store.bucket, Key=self.key,
                                             Body=json.dumps(record).encode(), **condition)
        return reply["ETag"]

    def _current(self) -> tuple[dict[str, Any], str | None]:
        """The record in the lock object and its ETag ({}, None when there is none)."""
        try:
            reply = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key)
        except ClientError as exc:
            if _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return {}, None
            raise PrismError(f"cannot read the lock {self.url}: {_s3_code(exc)}") from None
        try:
            record = json.loads(reply["Body"].read().decode())
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), reply["ETag"]

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return time.time() - float(holder.get("heartbeat", 0)) > self.lease

    def acquire(self) -> S3RoundLock:
        """Take the lock, or raise `RoundLockedError` naming the holder."""
        with _held_guard:
            if self.url in _held:
                _held[self.url][1] += 1
                self._holding = True
                return self
            now = time.time()
            self._record = {"round": self.round_key, "owner": self.owner, "run_id": self.run_id, "pid": os.getpid(),
                            "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "heartbeat": now}
            for _ in range(3):  # a record deleted between our PUT and our GET: try again
                try:
                    self._etag = self._put(self._record, IfNoneMatch="*")
                    break
                except ClientError as exc:
                    if _s3_code(exc) not in CONDITION_FAILED:
                        raise PrismError(f"cannot lock round {self.round_key} at {self.url}: {_s3_code(exc)}") from None
                holder, etag = self._current()
                if etag is None:
                    continue
                if self.run_id and holder.get("run_id") == self.run_id:
                    return self  # a process of the run that holds the lock
                refusal = RoundLockedError(_refusal(self.round_key, store_uri=self.store.uri, holder=holder,
                                                    where=f"lock object: {self.url}"))
                if not self._stale(holder):
                    raise refusal
                try:
                    self._etag = self._put(self._record, IfMatch=etag)
                except ClientError:
                    raise refusal from None  # another process took it over first
                self.replaced = holder
                break
            else:
                raise PrismError(f"cannot lock round {self.round_key} at {self.url}: the lock object keeps changing")
            _held[self.url] = [self, 1]
            self._holding = True
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh, name=f"lock {self.round_key}", daemon=True)
        self._heartbeat.start()
        if self.replaced:
            log.warning("round %s: took over the lock of %s (pid %s on %s, since %s), which is no longer running",
                        self.round_key, self.replaced.get("owner"), self.replaced.get("pid"),
                        self.replaced.get("host"), self.replaced.get("started"))
        removed = self.store.remove_temporary_files(self.round_key)
        if removed:
            log.warning("round %s: aborted %d incomplete upload(s) left by an interrupted write",
                        self.round_key, removed)
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.lease / 4):
            self._record["heartbeat"] = time.time()
            try:
                self._etag = self._put(self._record, IfMatch=self._etag)
            except ClientError as exc:
                log.error("round %s: lost the lock %s (%s): another process took it over", self.round_key,
                          self.url, _s3_code(exc))
                return
            except BotoCoreError as exc:  # a network hiccup: the next beat tries again
                log.warning("round %s: could not refresh the lock %s (%s)", self.round_key, self.url, exc)

    def release(self) -> None:
        """Give the lock back (the outermost release of this process deletes the record)."""
        if not self._holding:
            return
        self._holding = False
        with _held_guard:
            entry = _held[self.url]
            entry[1] -= 1
            if entry[1]:
                return
            del _held[self.url]
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key, IfMatch=self._etag)
        except ClientError as exc:
            log.warning("round %s: did not delete the lock %s (%s)", self.round_key, self.url, _s3_code(exc))


CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
"""S3 error codes of a conditional write that lost (the object exists, or changed)."""


def _refusal(round_key: str, *, store_uri: str, holder: dict[str, Any], where: str) -> str:
    if holder:
        who = (f"{holder.get('owner') or 'another run'} (pid {holder.get('pid')} on host {holder.get('host')}, "
               f"since {holder.get('started')})")
    else:
        who = "another process that is just starting"
    return (f"round {round_key} of the store {store_uri} is being written by {who}; two runs of one "
            f"round would interleave their writes, so this run stops without writing. Wait for that run to "
            f"finish or stop it ({where})")


def _lock_record(fd: int) -> dict[str, Any]:
    """The holder record in an open lock file ({} when empty or unreadable)."""
    try:
        size = os.fstat(fd).st_size
        value = json.loads(os.pread(fd, size, 0).decode()) if size else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
