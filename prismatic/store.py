"""The table store: one Parquet file per table and round, `<root>/<table>/round=<rNNN>/part-0.parquet`.

Every table of DESIGN §4 has a fixed polars schema (`TABLES`). The hive partition column `round`
lives only in the directory name, never inside a file, so DuckDB's `hive_partitioning` adds it.

Writes are validated and atomic:
- the frame must have exactly the table's columns; a column whose dtype differs is cast only when
  no value changes (Int32 → Int64, Float32 → Float64, an all-null column, ...), otherwise the write
  is refused with a `PrismError` naming the table and the column, and nothing is written;
- key columns (`KEYS`) must be non-null and unique within the partition;
- the file is written to a temporary file beside the partition directory (a dot-name ending in
  `.tmp`, which no `round=*/*.parquet` glob matches), fsynced, then moved into place with
  `os.replace`. A reader sees the old partition or the new one, never a half-written file; the
  store writes exactly one file per partition, so a rewrite replaces the partition whole (stray
  `*.parquet` files left there by anything else are removed after the swap).

The frame's provenance (`metadata=`, a JSON-serializable dict) travels in the file's Parquet
key-value metadata and comes back from `read_metadata`.

One run at a time per round: `Store.lock_round(key)` is an exclusive claim on every table of one
round partition (see `RoundLock`); a second run of the same round is refused with a message naming
the run that holds it. Taking the lock also removes temporary files that a killed writer of that
round left behind.

All path logic sits behind `Store` methods so that an S3 store can come later behind the same
interface; today the root must be a local directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.errors import PrismError
from prismatic.faults import fault_point

log = logging.getLogger(__name__)

ROUND_RE = re.compile(r"^r\d{3,}$")
PARTITION_COLUMN = "round"
PART_FILE = "part-0.parquet"
PROVENANCE_KEY = b"prismatic.provenance"
LOCK_DIR = "_locks"
"""Directory under the store root that holds one lock file per round (no table glob matches it)."""

ANY_WIDTH = 0
"""`pl.Array(pl.Float32, ANY_WIDTH)` in `TABLES` stands for a fixed-size float32 array of any width
(gradient features: the width is the projection dimension d). `schema(table, dim=d)` fills it in."""

_STR = pl.String()
_INT = pl.Int64()
_FLOAT = pl.Float64()
_BOOL = pl.Boolean()

TABLES: dict[str, dict[str, pl.DataType]] = {
    # The seed problems of round r000. level: difficulty level (weights few-shot sampling).
    "seeds": {
        "id": _STR, "prompt": _STR, "response": _STR, "answer": _STR, "task": _STR,
        "source": _STR, "level": _INT,
    },
    # Raw LLM outputs. kind: 'problem' | 'solution'; task: 'math' | 'nli'; parent_ids: the few-shot ids a
    # problem was made
    # from, or the problem id a solution answers; request_key: the deterministic request key;
    # sampling: the sampling parameters as JSON.
    "generations": {
        "id": _STR, "kind": _STR, "task": _STR, "parent_ids": pl.List(_STR), "text": _STR, "model": _STR,
        "request_key": _STR, "sampling": _STR,
    },
    # Solutions kept by the majority vote. votes: solutions whose answer equals this one;
    # majority_size: the size of the winning answer group of the problem.
    "verified_samples": {
        "id": _STR, "problem_id": _STR, "prompt": _STR, "response": _STR, "answer": _STR,
        "votes": _INT, "majority_size": _INT, "task": _STR,
    },
    # Projected per-sample gradients (DESIGN §7). dim: the width of `feature`; n_tokens: tokens
    # the loss was taken over; truncated: whether max_tokens cut the chat.
    "gradient_features": {
        "id": _STR, "feature": pl.Array(pl.Float32, ANY_WIDTH), "proxy": _STR, "mode": _STR,
        "dim": _INT, "n_tokens": _INT, "truncated": _BOOL,
    },
    # Spherical k-means of the pool. distance: cosine distance to the cluster's centroid.
    "clusters": {"id": _STR, "cluster": _INT, "cluster_size": _INT, "distance": _FLOAT},
    # The centroids of that clustering (unit rows); the next round assigns its candidates to them.
    "centroids": {"cluster": _INT, "centroid": pl.Array(pl.Float32, ANY_WIDTH), "size": _INT},
    # One row per candidate: the nearest pool cluster, its size when the decision was made, the
    # decision, and the rule that made it ('paper' | 'balanced').
    "selection": {
        "id": _STR, "cluster": _INT, "cluster_size_at_decision": _INT, "kept": _BOOL, "rule": _STR,
    },
    # The pool as of this round. origin: 'seed' | 'generated'; round_added: e.g. 'r001'.
    "pool": {
        "id": _STR, "prompt": _STR, "response": _STR, "answer": _STR, "task": _STR,
        "origin": _STR, "round_added": _STR,
    },
    # One row per metric. n: samples scored; details: JSON (proxy, dim, raw counts, ...).
    "diversity_scores": {"metric": _STR, "value": _FLOAT, "n": _INT, "details": _STR},
    # Rows dropped on the way (dedup, decontamination, failed parse, ...). detail: free text.
    "rejections": {"id": _STR, "reason": _STR, "detail": _STR},
}

KEYS: dict[str, tuple[str, ...]] = {
    "seeds": ("id",),
    "generations": ("id",),
    "verified_samples": ("id",),
    "gradient_features": ("id",),
    "clusters": ("id",),
    "centroids": ("cluster",),
    "selection": ("id",),
    "pool": ("id",),
    "diversity_scores": ("metric",),
    "rejections": (),
}
"""Columns that identify a row within one partition: never null, never repeated."""


def check_table(table: str) -> str:
    if table not in TABLES:
        raise PrismError(f"unknown table '{table}'; tables are: {', '.join(TABLES)}")
    return table


def check_round(round_key: str) -> str:
    """Round keys are `r` and at least three digits: `r000`, `r001`, ..., `r1000`."""
    if not isinstance(round_key, str) or not ROUND_RE.fullmatch(round_key):
        raise PrismError(f"invalid round key {round_key!r}: expected 'r' and at least 3 digits, e.g. 'r001'")
    return round_key


def round_sort_key(round_key: str) -> tuple[int, str]:
    """Numeric order (r999 before r1000)."""
    return int(round_key[1:]), round_key


def schema(table: str, *, dim: int | None = None) -> pl.Schema:
    """The concrete polars schema of `table`; `dim` fixes the width of `gradient_features.feature`."""
    out = {}
    for name, dtype in TABLES[check_table(table)].items():
        if _is_any_width(dtype):
            if dim is None or dim <= 0:
                raise PrismError(f"table '{table}', column '{name}': give dim > 0 for the feature width")
            dtype = pl.Array(pl.Float32, dim)
        out[name] = dtype
    return pl.Schema(out)


def conform(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with exactly the columns of `table`, in schema order and schema dtypes.

    Raises `PrismError` naming the table and the column for a missing or extra column, a dtype
    that cannot be cast without changing a value, or a null or repeated key.
    """
    spec = TABLES[check_table(table)]
    if not isinstance(frame, pl.DataFrame):
        raise PrismError(f"table '{table}': expected a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise PrismError(f"table '{table}': missing column(s) {', '.join(repr(c) for c in missing)}")
    extra = [c for c in frame.columns if c not in spec]
    if extra:
        note = (f" ('{PARTITION_COLUMN}' is the partition: it lives in the directory name, not in files)"
                if PARTITION_COLUMN in extra else "")
        raise PrismError(f"table '{table}': unexpected column(s) {', '.join(repr(c) for c in extra)}{note}")
    columns = [_conform_column(table, name, frame.get_column(name), dtype) for name, dtype in spec.items()]
    out = pl.DataFrame(columns)
    for key in KEYS[table]:
        column = out.get_column(key)
        if column.null_count():
            raise PrismError(f"table '{table}', column '{key}': {column.null_count()} null key(s)")
        if column.n_unique() != len(column):
            repeated = column.filter(column.is_duplicated()).unique(maintain_order=True).head(3).to_list()
            raise PrismError(f"table '{table}', column '{key}': repeated key(s) {repeated}")
    return out


class Store:
    """Parquet tables per round under a local root directory."""

    def __init__(self, root: str | Path):
        text = str(root)
        if text.startswith("file://"):
            text = text[len("file://"):]
        elif "://" in text:
            raise PrismError(f"store {text!r}: only local directories are supported so far")
        self.root = Path(text).expanduser().absolute()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def _table_dir(self, table: str) -> Path:
        return self.root / check_table(table)

    def _partition_dir(self, table: str, round_key: str) -> Path:
        return self._table_dir(table) / f"{PARTITION_COLUMN}={check_round(round_key)}"

    def lock_path(self, round_key: str) -> Path:
        """The lock file of round `round_key` (see `RoundLock`)."""
        return self.root / LOCK_DIR / f"{PARTITION_COLUMN}={check_round(round_key)}.lock"

    def path(self, table: str, round_key: str) -> Path:
        """Where the partition's file lives (whether or not it exists)."""
        return self._partition_dir(table, round_key) / PART_FILE

    def glob(self, table: str) -> str:
        """A glob over every partition file of `table`, for DuckDB's `read_parquet`."""
        return str(self._table_dir(table) / f"{PARTITION_COLUMN}=*" / "*.parquet")

    # -- listing -----------------------------------------------------------------------------

    def exists(self, table: str, round_key: str) -> bool:
        return self.path(table, round_key).is_file()

    def rounds(self, table: str) -> list[str]:
        """Round keys that have a file for `table`, in numeric order."""
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

    def tables(self) -> list[str]:
        """Tables with at least one round, in `TABLES` order."""
        return [table for table in TABLES if self.rounds(table)]

    # -- reading -----------------------------------------------------------------------------

    def read(self, table: str, round_key: str) -> pl.DataFrame:
        """The partition as a frame with the table's schema (no `round` column)."""
        path = self.path(table, round_key)
        if not path.is_file():
            raise PrismError(f"table '{table}' has no round '{round_key}' in the store at {self.root}")
        return conform(table, pl.from_arrow(self._read_arrow(path)))

    def read_metadata(self, table: str, round_key: str) -> dict[str, Any]:
        """The provenance dict given to `write` (empty when none was given)."""
        path = self.path(table, round_key)
        if not path.is_file():
            raise PrismError(f"table '{table}' has no round '{round_key}' in the store at {self.root}")
        try:
            raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
        except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or unreadable file
            raise PrismError(f"{path}: not a readable Parquet file ({exc})") from None
        return json.loads(raw) if raw else {}

    @staticmethod
    def _read_arrow(path: Path):
        """The file's table, read through one open handle: given a path, pyarrow opens the file once
        for the footer and again for the data, and a rewrite between the two would pair the old
        footer with the new file's bytes."""
        try:
            with path.open("rb") as handle:
                return pq.read_table(handle)
        except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or unreadable file
            raise PrismError(f"{path}: not a readable Parquet file ({exc})") from None

    # -- writing -----------------------------------------------------------------------------

    def lock_round(self, round_key: str, owner: str, *, run_id: str | None = None) -> RoundLock:
        """An exclusive claim on round `round_key`: `with store.lock_round("r001", "prism run"): ...`."""
        return RoundLock(self, round_key, owner, run_id=run_id)

    def remove_temporary_files(self, round_key: str) -> int:
        """Delete the temporary files of round `round_key` that killed writers left; returns how many.

        Only safe while holding the round's lock (`RoundLock` calls it when it takes the lock): then
        no live writer of that round exists.
        """
        removed = 0
        pattern = f".{PARTITION_COLUMN}={check_round(round_key)}.*.tmp"
        for table in TABLES:
            table_dir = self._table_dir(table)
            if table_dir.is_dir():
                for leftover in table_dir.glob(pattern):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed

    def write(self, table: str, round_key: str, frame: pl.DataFrame,
              metadata: dict[str, Any] | None = None) -> Path:
        """Validate `frame` and replace the partition `table`/`round_key` with it, atomically."""
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
        target = self.path(table, round_key)
        partition = target.parent
        table_dir = partition.parent
        table_dir.mkdir(parents=True, exist_ok=True)
        # Beside the partition directory, a dot-name not ending in .parquet: no reader's glob sees it.
        fd, tmp = tempfile.mkstemp(dir=table_dir, prefix=f".{partition.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(data, handle)
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
        return target


class RoundLockedError(PrismError):
    """Another live run holds the lock of the round this run wants to write."""


_held: dict[str, list] = {}
"""Locks this process holds: lock path → [file descriptor, nesting depth]."""
_held_guard = threading.Lock()


class RoundLock:
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

    For object storage (S3 has no flock) the same record becomes an object `_locks/round=rNNN.json`
    created with a conditional PUT (`If-None-Match: *`), so exactly one writer creates it; there a
    lock is stale when its host is this host and its pid is gone, or when its holder stopped
    refreshing it; releasing deletes the object.
    """

    def __init__(self, store: Store, round_key: str, owner: str, *, run_id: str | None = None):
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

    def __enter__(self) -> RoundLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

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
                raise RoundLockedError(self._refusal(holder)) from None
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

    def _refusal(self, holder: dict[str, Any]) -> str:
        if holder:
            who = (f"{holder.get('owner') or 'another run'} (pid {holder.get('pid')} on host {holder.get('host')}, "
                   f"since {holder.get('started')})")
        else:
            who = "another process that is just starting"
        return (f"round {self.round_key} of the store {self.store.root} is being written by {who}; two runs of one "
                f"round would interleave their writes, so this run stops without writing. Wait for that run to "
                f"finish or stop it (lock file: {self.path})")


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


def _is_any_width(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Array) and dtype.shape == (ANY_WIDTH,)


def _family(dtype: pl.DataType) -> Any:
    if dtype == pl.Null:
        return "null"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.List):
        return ("list", _family(dtype.inner))
    if isinstance(dtype, pl.Array):
        return ("array", dtype.shape, _family(dtype.inner))
    return str(dtype)


def _castable(source: Any, target: Any) -> bool:
    """Whether a value of family `source` may become `target` (the values are checked after)."""
    if source == target or source == "null":
        return True
    if source == "int" and target == "float":
        return True
    if isinstance(source, tuple) and isinstance(target, tuple) and source[0] == target[0]:
        if source[0] == "list":
            return _castable(source[1], target[1])
        return source[1] == target[1] and _castable(source[2], target[2])
    return False


def _conform_column(table: str, name: str, column: pl.Series, want: pl.DataType) -> pl.Series:
    have = column.dtype
    if _is_any_width(want):
        if not (isinstance(have, pl.Array) and len(have.shape) == 1 and have.shape[0] > 0):
            raise PrismError(f"table '{table}', column '{name}': expected a fixed-size float32 array "
                             f"pl.Array(pl.Float32, dim), got {have}")
        want = pl.Array(pl.Float32, have.shape[0])
    if have == want:
        return column
    if not _castable(_family(have), _family(want)):
        raise PrismError(f"table '{table}', column '{name}': expected {want}, got {have}")
    try:
        cast = column.cast(want, strict=True)
        # Strict casts refuse integer overflow; only a float target can lose a value silently.
        lossless = "float" not in str(_family(want)) or cast.cast(have).equals(column)
    except pl.exceptions.PolarsError:
        lossless = False
    if not lossless:
        raise PrismError(f"table '{table}', column '{name}': expected {want}, got {have} "
                         f"with values that do not fit {want}")
    return cast
