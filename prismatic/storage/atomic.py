"""Atomic file writes: `write_atomically(path, data)` makes `data` the content of `path` at once.

The one temporary-file-then-rename write of the project: the local store's partition files, gradient
feature files and `prism select-files` output all go through it. A reader sees the old file or the new
one, never a half-written file. See docs/data-model.md (how the store publishes a partition).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prismatic.faults import fault_point


def write_atomically(path: str | Path, data: bytes, *, temp_dir: str | Path | None = None,
                     fault: str | None = None) -> Path:
    """Make `data` the content of `path`, at once; returns `path`.

    The bytes go to a temporary file `.<name>.<random>.tmp` in `temp_dir` (default: `path`'s own
    directory; it must hold `path`, at any depth, on the same filesystem), where `<name>` is the entry
    of `temp_dir` that leads to `path` (`path`'s file name by default). The file is fsynced, then
    moved onto `path` with `os.replace`, and the directories the rename touched are fsynced. A dot-name
    ending in `.tmp` is matched by no `*.parquet` or `*.jsonl` glob. On any error (or interrupt) the
    temporary file is removed and `path` is left as it was.

    temp_dir: the local store passes the table directory, so a partition's temporary file
    `.round=<rNNN>.<random>.tmp` sits beside the partition directory, which is created only when the
    file is complete. fault: a `fault_point` name passed after the fsync, before the rename.
    """
    path = Path(path)
    directory = path.parent
    staging = Path(temp_dir) if temp_dir is not None else directory
    name = path.name if temp_dir is None else path.relative_to(staging).parts[0]
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=staging, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if fault is not None:
            fault_point(fault)
        directory.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    if staging != directory:
        fsync_dir(staging)
    return path


def fsync_dir(path: str | Path) -> None:
    """Make a rename or an unlink in directory `path` durable (POSIX); a no-op where directories cannot be opened."""
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
