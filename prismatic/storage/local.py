"""The local backend: `LocalStore`, tables under a directory, published with `atomic.write_atomically`,
and `RoundLock`, its round lock (a file under an `flock`).

Layout and guarantees are those of `base.Store`; see docs/data-model.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prismatic.errors import PrismError
from prismatic.rounds import ROUND_RE, check_round, round_sort_key
from prismatic.storage.atomic import fsync_dir, write_atomically
from prismatic.storage.base import LOCK_DIR, PART_FILE, REPORT_DIR, Store
from prismatic.storage.locks import BaseRoundLock, parse_record
from prismatic.storage.schema import PARTITION_COLUMN, TABLES, check_table


class LocalStore(Store):
    """Tables under a local directory: `<root>/<table>/round=<rNNN>/part-0.parquet`.

    A write goes to a temporary file beside the partition directory (a dot-name ending in `.tmp`,
    `<table>/.round=<rNNN>.<random>.tmp`, which no `round=*/*.parquet` glob matches), is fsynced, then
    moved into place with `os.replace`. Stray `*.parquet` files left in the partition by anything else
    are removed after the swap.
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

    def write_report(self, round_key: str, name: str, data: bytes) -> str:
        target = self.root / REPORT_DIR / f"{PARTITION_COLUMN}={check_round(round_key)}" / Path(name).name
        return str(write_atomically(target, data))

    def _publish(self, table: str, round_key: str, data: bytes) -> None:
        target = self.path(table, round_key)
        partition = target.parent
        # Beside the partition directory, a dot-name not ending in .parquet: no reader's glob sees it.
        write_atomically(target, data, temp_dir=partition.parent, fault=f"store.write:{table}")
        strays = [stray for stray in partition.glob("*.parquet") if stray.name != PART_FILE]
        for stray in strays:
            stray.unlink(missing_ok=True)
        if strays:
            fsync_dir(partition)


class RoundLock(BaseRoundLock):
    """The round lock of a `LocalStore`: a file `<root>/_locks/round=<rNNN>.lock` under an `flock` held for
    the lock's whole life. Its content is a JSON record of the holder, `{round, owner, run_id, pid, host,
    started}`, so a refused run can say who holds the round. Properties:

    - A second process is refused at once (`RoundLockedError`, a `PrismError`): nothing waits, nothing
      is written by the refused run.
    - A holder killed with SIGKILL cannot leave a stale lock: the kernel drops an `flock` when the
      process dies, so the rerun takes the lock, logs whose record it replaced, and removes the
      temporary files the dead writer left (`Store.remove_temporary_files`).
    - Re-entrant in a process, and shared by the processes of one Dagster run (`run_id`, multiprocess
      executor: one process per step), as `BaseRoundLock` says.
    - The file is never deleted (an unlinked lock file would let two processes lock two different
      files); releasing empties it.
    """

    def __init__(self, store: LocalStore, round_key: str, owner: str, *, run_id: str | None = None):
        super().__init__(store, round_key, owner, run_id=run_id)
        self.path = store.lock_path(round_key)

    def __repr__(self) -> str:
        return f"RoundLock({str(self.path)!r}, owner={self.owner!r})"

    def acquire(self) -> RoundLock:
        """Take the lock, or raise `RoundLockedError` naming the holder."""
        key = str(self.path)
        with self._guard:
            if self._reenter(key):
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock_file(fd)
                os.close(fd)
                if self.run_id and holder.get("run_id") == self.run_id:
                    return self  # a process of the run that holds the lock
                raise self._refusal(holder, where=f"lock file: {self.path}") from None
            except OSError as exc:
                os.close(fd)
                raise PrismError(f"cannot lock round {self.round_key} at {self.path}: {exc.strerror}") from None
            self.replaced = _read_lock_file(fd) or None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._record()).encode(), 0)
            os.fsync(fd)
            self._register(key, fd)
        self._taken()
        return self

    def release(self) -> None:
        """Give the lock back (the outermost release of this process empties the file and unlocks it)."""
        if not self._holding:
            return
        self._holding = False
        with self._guard:
            outermost, fd = self._unregister(str(self.path))
            if not outermost:
                return
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _read_lock_file(fd: int) -> dict[str, Any]:
    """The holder record in an open lock file ({} when empty or unreadable)."""
    try:
        raw = os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        return {}
    return parse_record(raw)
